"""One writer per folder (a real second process is refused, naming the first), and --force keeps the old cache
until the new run has its first shard."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teacher_cache import open_cache
from teacher_cache.base.errors import CacheError
from teacher_cache.base.lock import LOCK_NAME, FolderLock, holder
from tests.helpers import one_line, run_cli, shard_digests, tc_subprocess

ROOT = Path(__file__).resolve().parent.parent


def encode_args(teacher_dir, corpus, out, *extra):
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir),
            "--max-length", "64", "--precision", "fp32", *extra, "--quiet"]


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out")


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


# ---- the lock itself ------------------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    folder = tmp_path / "a" / "b"
    first = FolderLock(folder, "tc encode").acquire()
    assert (folder / LOCK_NAME).exists() and f"pid {os.getpid()}" in holder(folder)
    with pytest.raises(CacheError, match=rf"--out {folder}: in use by pid {os.getpid()} .*tc encode"):
        FolderLock(folder, "tc encode").acquire()
    first.release()
    assert holder(folder) is None
    assert not (tmp_path / "a").exists()  # the lock made both folders and they stayed empty: both removed


def test_a_stale_lock_file_left_by_a_crash_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 999999 on elsewhere (tc encode, since long ago)\n")
    assert holder(tmp_path) is None  # nobody holds it: a file alone is no lock
    with FolderLock(tmp_path, "tc train-student"):
        assert "tc train-student" in (tmp_path / LOCK_NAME).read_text()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_holder_probe_at_the_moment_of_locking_is_not_taken_for_a_writer(tmp_path):
    import fcntl
    import threading

    (tmp_path / LOCK_NAME).write_text("")
    probe = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what holder() holds for an instant, held here for 30 ms
    threading.Timer(0.03, os.close, [probe]).start()
    with FolderLock(tmp_path, "tc encode"):  # retried past the probe, not refused as "in use by another process"
        assert "tc encode" in holder(tmp_path)


# ---- two real processes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    from tests.conftest import SAMPLE

    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:2000]) + "\n")
    return path


def test_a_second_encode_into_the_same_folder_is_refused(tmp_path, teacher_dir, long_corpus, capsys):
    out = tmp_path / "out"
    args = encode_args(teacher_dir, long_corpus, out, "--shard-size", "100", "--max-tokens", "256",
                       "--dtype", "float32")
    first = tc_subprocess(*args)
    try:
        wait_for(lambda: (out / "manifest.json").exists(), first)
        first.send_signal(signal.SIGSTOP)  # the first writer holds the lock, frozen mid-run
        before = folder_state(out)
        code, _, err = run_cli(capsys, *encode_args(teacher_dir, long_corpus, out, "--shard-size", "100",
                                                    "--dtype", "float16"))
        line = one_line(code, err, f"--out {out}: in use by pid {first.pid}", "tc encode")
        assert "choose another folder" in line
        code, _, err = run_cli(capsys, *encode_args(teacher_dir, long_corpus, out, "--shard-size", "100",
                                                    "--force"))
        one_line(code, err, f"pid {first.pid}")  # --force does not break a lock either
        assert folder_state(out) == before  # the refused runs touched nothing
        code, _, err = run_cli(capsys, "train-student", "--shards", out, "--out", tmp_path / "s")
        one_line(code, err, "being written", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not (out / LOCK_NAME).exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dtype"] == "float32"
    assert run_cli(capsys, "verify", out)[0] == 0


def test_a_killed_writer_leaves_a_stale_lock_that_the_rerun_takes_over(tmp_path, teacher_dir, long_corpus, capsys):
    out = tmp_path / "out"
    args = encode_args(teacher_dir, long_corpus, out, "--shard-size", "100", "--max-tokens", "256")
    proc = tc_subprocess(*args)
    wait_for(lambda: len(list(out.glob("shard-*.arrow"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"pid {proc.pid}" in (out / LOCK_NAME).read_text()  # left behind, but the kernel released the lock
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert len(open_cache(out)) == 2000 and not (out / LOCK_NAME).exists()


def spawn_training(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pipeline.cli", "train-student", "--shards", str(cache), "--out", str(out),
            "--arch", "bilstm", "--init-embeddings", "teacher", "--loss", "mse", "--emb-dim", "16", "--hidden", "16",
            "--batch-size", "16", "--lr", "0.01", "--val-rows", "30", "--epochs", "50", "--checkpoint-every", "5",
            *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"])
    except (FileNotFoundError, ValueError, KeyError):
        return -1


def test_a_second_training_into_the_same_out_is_refused(tiny_cache, tmp_path, capsys):
    out = tmp_path / "s"
    first = spawn_training(tiny_cache, out)
    try:
        wait_for(lambda: checkpoint_step(out) > 0, first)
        first.send_signal(signal.SIGSTOP)
        before = folder_state(out)
        for extra in ([], ["--resume"], ["--force"]):
            code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", out, *extra)
            one_line(code, err, f"--out {out}: in use by pid {first.pid}", "tc train-student")
        assert folder_state(out) == before
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()


# ---- --force: the old cache stays until the new run has its first shard ---------------------------------------


@pytest.fixture
def complete_copy(tiny_cache, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(tiny_cache, copy)
    return copy


def bad_gzip(path: Path) -> Path:
    data = bytearray(gzip.compress(("A sentence that is long enough to compress. " * 3 + "\n").encode() * 400))
    for i in range(20, 28):  # inside the deflate stream: zlib.error, not BadGzipFile
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make_corpus,needle", [
    (lambda p: (p / "blank.txt").write_text("\n  \n\n") and p / "blank.txt", "no non-blank line"),
    (lambda p: bad_gzip(p / "corrupt.txt.gz"), "corrupt.txt.gz"),
    (lambda p: p / "missing.txt", "no such file"),
])
def test_a_failed_force_run_keeps_the_old_cache(complete_copy, tmp_path, teacher_dir, capsys, make_corpus, needle):
    before = folder_state(complete_copy)
    corpus = make_corpus(tmp_path)
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, complete_copy, "--force"))
    one_line(code, err, needle)
    assert folder_state(complete_copy) == before
    assert run_cli(capsys, "verify", complete_copy)[0] == 0


def test_a_force_run_stopped_before_its_first_shard_keeps_the_old_cache(complete_copy, teacher_dir, corpus_file,
                                                                         capsys, monkeypatch):
    from teacher_cache.encode import run as encode

    before = folder_state(complete_copy)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the first new shard is being encoded

    monkeypatch.setattr(encode.BatchEncoder, "encode_tokenized", fail)
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, complete_copy, "--force",
                                                "--pooling", "cls", "--shard-size", "50"))
    assert code == 130, err
    assert folder_state(complete_copy) == before


def test_a_force_run_replaces_every_file_of_the_old_cache(complete_copy, teacher_dir, corpus_file, capsys):
    (complete_copy / "notes.txt").write_text("mine")  # not the cache's: kept, never checksummed
    old = shard_digests(complete_copy)
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, complete_copy, "--force",
                                                "--pooling", "cls", "--shard-size", "150"))
    assert code == 0, err
    assert len(shard_digests(complete_copy)) == 2 and shard_digests(complete_copy) != old
    assert not (complete_copy / "shard-00002.arrow").exists()
    assert (complete_copy / "notes.txt").read_text() == "mine"
    manifest = json.loads((complete_copy / "manifest.json").read_text())
    assert "notes.txt" not in manifest["files"] and manifest["extra"]["other_files"] == ["notes.txt"]
    assert run_cli(capsys, "verify", complete_copy)[0] == 0
