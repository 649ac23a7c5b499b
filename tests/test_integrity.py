"""Nothing on disk is trusted: resume re-checks the shards and files it keeps, `tc verify` checks every file of a
cache, a resumed training refuses another cache, and a checkpoint that cannot be written leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from teacher_cache import open_cache
from teacher_cache.base.errors import CacheError
from teacher_cache.base.lock import LOCK_NAME
from tests.helpers import one_line, run_cli, shard_digests
from tests.test_locks_and_force import checkpoint_step, spawn_training

TRAIN = ["--arch", "bilstm", "--init-embeddings", "teacher", "--loss", "mse", "--emb-dim", "16", "--hidden", "16",
         "--batch-size", "16", "--lr", "0.01", "--val-rows", "30"]


def encode_args(teacher_dir, corpus, out, *extra):
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir), "--max-length", "64",
            "--precision", "fp32", "--pooling", "mean,cls", "--shard-size", "100", *extra]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture
def copy(tiny_cache, tmp_path):
    """A private copy of the complete 300-row, 3-shard cache (same settings as encode_args)."""
    dest = tmp_path / "cache"
    shutil.copytree(tiny_cache, dest)
    return dest


def test_the_manifest_records_every_file_of_the_cache(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    on_disk = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    shards = {s["file"] for s in manifest["shards"]}
    assert set(manifest["files"]) == on_disk - shards - {"manifest.json"}
    assert {"token_embeddings.safetensors", "tokenizer/tokenizer.json"} <= set(manifest["files"])
    assert all(s["bytes"] == (copy / s["file"]).stat().st_size for s in manifest["shards"])


@pytest.mark.parametrize("damage", ["token_embeddings.safetensors", "tokenizer/tokenizer.json",
                                    "tokenizer/tokenizer_config.json"])
def test_verify_checks_every_file_and_a_rerun_repairs_it(copy, teacher_dir, corpus_file, tmp_path, capsys, damage):
    digests = shard_digests(copy)
    truncate(copy / damage)
    code, _, err = run_cli(capsys, "verify", copy)
    one_line(code, err, damage, "truncated")
    # train-student checks the same before it reads anything: one line, not a traceback from the tokenizer
    code, _, err = run_cli(capsys, "train-student", "--shards", copy, "--out", tmp_path / "s", *TRAIN)
    one_line(code, err, damage)
    assert not (tmp_path / "s").exists()
    # rerunning the encode writes the damaged file again; the shards are kept as they are
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, copy))
    assert code == 0, err
    assert f"warning: {copy / damage}" in err and "writing it again" in err
    assert run_cli(capsys, "verify", copy)[0] == 0
    assert shard_digests(copy) == digests


def test_verify_names_a_shard_of_another_size(copy, capsys):
    truncate(copy / "shard-00002.arrow")
    code, _, err = run_cli(capsys, "verify", copy)
    one_line(code, err, "shard-00002.arrow", "truncated")


def test_a_shard_deleted_from_a_complete_cache_is_encoded_again(copy, tiny_cache, teacher_dir, corpus_file, capsys):
    (copy / "shard-00001.arrow").unlink()
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, copy))
    assert code == 0, err
    assert "nothing to do" not in err
    assert "shard-00001.arrow: missing; encoding again from shard 1" in err
    assert shard_digests(copy) == shard_digests(tiny_cache)
    assert run_cli(capsys, "verify", copy)[0] == 0


def test_a_shard_corrupted_before_a_resume_is_not_kept(copy, tiny_cache, teacher_dir, corpus_file, capsys):
    # an interrupted run: two shards listed, the manifest not complete, and shard 0 damaged on disk since
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"], manifest["shards"] = False, manifest["shards"][:2]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "shard-00002.arrow").unlink()
    flip_byte(copy / "shard-00000.arrow")
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, copy))
    assert code == 0, err
    assert "shard-00000.arrow: checksum mismatch" in err and "encoding again from shard 0" in err
    assert shard_digests(copy) == shard_digests(tiny_cache)
    assert run_cli(capsys, "verify", copy)[0] == 0


def test_resume_refuses_a_cache_with_other_content(tiny_cache, teacher_dir, corpus_file, tmp_path, capsys):
    from student.training.train import TrainConfig, train
    from teacher_cache.encode.run import EncodeConfig, encode_corpus

    # the same corpus, teacher and settings, cut into shards of 50: other shards, so another data order
    other = tmp_path / "other"
    encode_corpus(EncodeConfig(corpus=[str(corpus_file)], out=other, teacher=str(teacher_dir),
                               pooling=["mean", "cls"], shard_size=50, max_length=64, quiet=True, precision="fp32"))
    cfg = TrainConfig(shards=str(tiny_cache), out=str(tmp_path / "s"), emb_dim=16, hidden=16,
                      batch_size=16, val_rows=30, max_steps=2, quiet=True, recipe="paper-512")
    train(cfg)
    cfg.resume, cfg.max_steps = True, 4
    with pytest.raises(CacheError, match=r"other settings \(cache\.fingerprint: '[0-9a-f]+' != '[0-9a-f]+'\)"):
        train(TrainConfig(**{**cfg.__dict__, "shards": str(other)}))
    assert train(cfg)["step"] == 4  # the cache it was made from resumes


def test_full_disk_at_the_first_checkpoint_then_rerun_and_resume_agree(tiny_cache, tmp_path, capsys, monkeypatch):
    import torch

    from student.training import checkpoint

    real_save = torch.save

    def save_then_fill_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_disk)
    out = tmp_path / "s"
    args = ["train-student", "--shards", tiny_cache, "--out", out, *TRAIN, "--max-steps", "3"]
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, "checkpoint.pt: cannot write the checkpoint (no space left on device)", "no checkpoint was")
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoint").exists()
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    code, _, err = run_cli(capsys, *args, "--resume")
    one_line(code, err, "--resume: no checkpoint", "start without --resume")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert (out / "checkpoint" / "checkpoint.pt").exists()


def test_a_leftover_checkpoint_tmp_is_not_a_run(tiny_cache, tmp_path, capsys):
    out = tmp_path / "s"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "checkpoint.pt.tmp").write_bytes(b"torn")  # a kill during the very first checkpoint
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", out, *TRAIN, "--resume")
    one_line(code, err, "--resume: no checkpoint", "start without --resume")
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", out, *TRAIN, "--max-steps", "2")
    assert code == 0, err
    assert not (out / "checkpoint" / "checkpoint.pt.tmp").exists() and (out / "checkpoint" / "checkpoint.pt").exists()


def test_sigterm_during_training_checkpoints_and_exits_143(tiny_cache, tmp_path):
    out = tmp_path / "s"
    proc = spawn_training(tiny_cache, out)
    deadline = time.monotonic() + 120
    while checkpoint_step(out) <= 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "terminated (SIGTERM) at step" in err and "checkpoint saved" in err
    assert (out / "checkpoint" / "checkpoint.pt").exists() and not (out / LOCK_NAME).exists()


def test_a_partial_cache_says_it_may_still_be_being_written(copy, capsys):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    finished = manifest.pop("versions")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="being written, or an encode was interrupted"):
        open_cache(copy)  # a first encode, not finished: no version to read
    manifest["versions"] = finished  # an update of a finished cache was interrupted: its last version is read
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert len(open_cache(copy)) == 300
    from teacher_cache.base.lock import FolderLock

    with FolderLock(copy, "tc encode"):
        with pytest.raises(CacheError, match=rf"still being written \(by pid {os.getpid()} "):
            open_cache(copy)


def test_a_complete_rerun_rechecks_but_changes_nothing(copy, teacher_dir, corpus_file, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, copy))
    assert code == 0 and "checksums match); nothing to do" in err
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before


def test_a_run_on_the_first_rows_checks_only_the_shards_it_reads(copy, tmp_path, capsys):
    flip_byte(copy / "shard-00002.arrow")  # ids 200-299
    args = ["train-student", "--shards", copy, "--epochs", "1", "--batch-size", "32", "--val-rows", "10", "--quiet"]
    code, _, err = run_cli(capsys, *args, "--max-rows", "150", "--out", tmp_path / "first")
    assert code == 0, err  # its two shards are whole: the damaged third is never read
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "all")
    one_line(code, err, "shard-00002.arrow", "checksum mismatch")
    assert not (tmp_path / "all").exists()
