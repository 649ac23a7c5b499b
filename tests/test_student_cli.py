"""`tc train-student`: bad input is one line and exit != 0 with nothing lost; SIGKILL and Ctrl-C then --resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.cli import main
from student import Student
from student.training.train import TrainConfig, train
from teacher_cache import open_cache

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--recipe", "paper-512", "--emb-dim", "16", "--hidden", "16", "--batch-size", "16", "--lr", "0.01",
        "--val-rows", "30"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train-student", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert out == ""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_has_an_example(capsys):
    assert main(["train-student", "--help"]) == 0
    assert "Example: tc train-student" in capsys.readouterr().out


def test_cli_trains_a_loadable_student(tiny_cache, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--shards", tiny_cache, "--out", tmp_path / "s", *TINY, "--epochs", "1")
    assert code == 0, err
    assert "eval step" in err and "val_mse" in err
    student = Student.from_pretrained(tmp_path / "s")
    texts = open_cache(tiny_cache).texts(np.arange(50))
    a = student.encode(texts, batch_size=4)
    assert a.shape == (50, 32)
    np.testing.assert_allclose(student.encode(texts[::-1], batch_size=32)[::-1], a, atol=1e-5)
    code, out, err = run_cli(capsys, "--shards", tiny_cache, "--out", tmp_path / "s", "--resume", *TINY)
    assert_one_line_error(code, out, err, "holds a finished student")


def corrupt_copy(cache: Path, dest: Path) -> Path:
    shutil.copytree(cache, dest)
    shard = dest / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return dest


def test_bad_inputs_are_one_line_and_lose_nothing(tiny_cache, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "--shards", tiny_cache, "--out", out, *TINY, "--max-steps", "3")
    assert code == 0, err
    before = snapshot(out)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notcache").mkdir()
    (tmp_path / "notcache" / "a.txt").write_text("hello")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("keep")
    (tmp_path / "afile").write_text("x")
    bad = corrupt_copy(tiny_cache, tmp_path / "bad")
    fresh = tmp_path / "fresh"
    cases = [
        (["--shards", tmp_path / "missing", "--out", fresh], "no such cache folder"),
        (["--shards", tmp_path / "empty", "--out", fresh], "not a teacher cache"),
        (["--shards", tmp_path / "notcache", "--out", fresh], "not a teacher cache"),
        (["--shards", bad, "--out", fresh], "shard-00001.arrow: checksum mismatch"),
        (["--shards", tiny_cache, "--out", fresh, "--resume"], "--resume: no checkpoint"),
        (["--shards", tiny_cache, "--out", out, "--resume", "--lr", "0.5"], "other settings"),
        (["--shards", tiny_cache, "--out", out], "earlier training run"),
        (["--shards", tiny_cache, "--out", out, "--resume", "--force"], "choose one"),
        (["--shards", tiny_cache, "--out", tmp_path / "other"], "not empty (holds keep.txt)"),
        (["--shards", tiny_cache, "--out", tmp_path / "afile"], "is a file"),
        (["--shards", tiny_cache, "--out", tiny_cache / "student"], "overlaps the cache folder"),
        (["--shards", tiny_cache, "--out", fresh, "--arch", "transformer"], "--arch transformer"),
        (["--shards", tiny_cache, "--out", fresh, "--epochs", "0"], "--epochs 0"),
        (["--shards", tiny_cache, "--out", fresh, "--batch-size", "0"], "--batch-size 0"),
        (["--shards", tiny_cache, "--out", fresh, "--lr", "-1"], "--lr -1"),
        (["--shards", tiny_cache, "--out", fresh, "--loss", "l1"], "--loss l1"),
        (["--shards", tiny_cache, "--out", fresh, "--init-embeddings", "glove"], "--init-embeddings glove"),
        (["--shards", tiny_cache, "--out", fresh, "--val-rows", "300"], "--val-rows 300"),
        (["--shards", tiny_cache, "--out", fresh, "--target-column", "pooler"], "no vector column 'pooler'"),
        (["--shards", tiny_cache, "--out", fresh, "--emb-dim", "0"], "--emb-dim 0"),
        (["--shards", tiny_cache, "--out", fresh, "--precision", "fp16"], "--precision fp16"),
        (["--shards", tiny_cache, "--out", fresh, "--device", "tpu"], "--device tpu"),
        (["--shards", tiny_cache, "--out", fresh, "--epochs", "many"], "Invalid value for '--epochs'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--shards", tiny_cache, "--out", fresh, "--device", "cuda"], "no CUDA device"))
    for args, needle in cases:
        assert_one_line_error(*run_cli(capsys, *args), needle)
    assert snapshot(out) == before
    assert (tmp_path / "other" / "keep.txt").read_text() == "keep" and (tmp_path / "afile").read_text() == "x"
    assert not fresh.exists() and not (tiny_cache / "student").exists()


def spawn(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pipeline.cli", "train-student", "--shards", str(cache), "--out", str(out),
            *TINY, "--epochs", "15", "--checkpoint-every", "5", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(out: Path, proc: subprocess.Popen, after: int, timeout: float = 60) -> int:
    """Wait until the checkpoint records a step beyond `after`; return it."""
    state = out / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            step = int(__import__("json").loads(state.read_text())["step"])
        except (FileNotFoundError, ValueError, KeyError):
            step = -1
        if step > after:
            return step
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def test_sigkill_and_ctrl_c_then_resume_match_an_uninterrupted_run(tiny_cache, tmp_path):
    out = tmp_path / "s"
    proc = spawn(tiny_cache, out)
    first = wait_for_step(out, proc, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model.safetensors").exists()

    proc = spawn(tiny_cache, out, "--resume")
    wait_for_step(out, proc, first)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    assert (out / "checkpoint" / "checkpoint.pt").exists() and not (out / "model.safetensors").exists()

    proc = spawn(tiny_cache, out, "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resuming at epoch" in err and not (out / "checkpoint").exists()

    whole = tmp_path / "whole"
    train(TrainConfig(shards=str(tiny_cache), out=str(whole), emb_dim=16, hidden=16, batch_size=16, lr=0.01,
                      val_rows=30, epochs=15, quiet=True, recipe="paper-512"))
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
