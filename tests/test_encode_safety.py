"""Crash safety and bad input for tc encode: one line each, nothing already written lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import numpy as np
import pytest

from teacher_cache import open_cache
from tests.helpers import error_lines, run_cli, shard_digests, tc_subprocess


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """2,000 real sentences: long enough to kill an encode part-way."""
    from tests.conftest import SAMPLE

    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:2000]) + "\n")
    return path


def base_args(teacher_dir, corpus, out, *extra):
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir),
            "--max-length", "64", "--precision", "fp32", *extra, "--quiet"]


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigkill_then_rerun_gives_identical_cache(tmp_path, teacher_dir, long_corpus, capsys):
    reference = tmp_path / "reference"
    options = ("--shard-size", "100", "--max-tokens", "256")
    assert run_cli(capsys, *base_args(teacher_dir, long_corpus, reference, *options))[0] == 0
    out = tmp_path / "killed"
    args = base_args(teacher_dir, long_corpus, out, *options)
    proc = tc_subprocess(*args)
    assert wait_for(lambda: len(list(out.glob("shard-*.arrow"))) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 0 < len(manifest["shards"]) < 20
    # rerun the same command: resumes, no row lost or duplicated, byte-identical shards
    code, _, err = run_cli(capsys, *args[:-1])
    assert code == 0, err
    assert "resuming after" in err
    assert shard_digests(out) == shard_digests(reference)
    ids = np.concatenate([b.ids for b in open_cache(out).iter_batches(batch_size=500)])
    assert ids.tolist() == list(range(2000))
    assert not list(out.glob("*.tmp"))


def test_sigint_removes_partial_shard_and_resumes(tmp_path, teacher_dir, long_corpus, capsys):
    out = tmp_path / "out"
    args = base_args(teacher_dir, long_corpus, out, "--shard-size", "500", "--max-tokens", "128")
    proc = tc_subprocess(*args)
    assert wait_for(lambda: (out / "manifest.json").exists())
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not list(out.glob("*.tmp"))
    assert run_cli(capsys, *args)[0] == 0
    assert len(open_cache(out)) == 2000


def test_rerun_with_other_settings_is_refused_and_force_restarts(tmp_path, teacher_dir, corpus_file, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, *base_args(teacher_dir, corpus_file, out, "--shard-size", "100"))[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus_file, out, "--shard-size", "100",
                                              "--pooling", "cls", "--max-length", "32"))
    assert_one_line_error(code, err, "pooling", "max_length", "--force")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text("A different sentence.\n")
    # another corpus is a change of the corpus; one that drops most rows asks first (the whole corpus is named)
    code, _, err = run_cli(capsys, *base_args(teacher_dir, other_corpus, out, "--shard-size", "100"))
    assert_one_line_error(code, err, "would drop 300 of the 300 rows of version 1", "--allow-removals")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, _, err = run_cli(capsys, *base_args(teacher_dir, other_corpus, out, "--shard-size", "100",
                                              "--allow-removals"))
    assert code == 0, err
    newest = open_cache(out).version
    assert (newest.version, newest.rows, newest.added, newest.removed) == (2, 1, 1, 300)
    assert len(open_cache(out, version=1)) == 300
    code, _, err = run_cli(capsys, *base_args(teacher_dir, other_corpus, out, "--force"))
    assert code == 0, err
    assert len(open_cache(out)) == 1 and not (out / "shard-00001.arrow").exists()


def test_rerun_of_complete_cache_does_nothing(tmp_path, teacher_dir, corpus_file, capsys):
    out = tmp_path / "out"
    args = base_args(teacher_dir, corpus_file, out)
    assert run_cli(capsys, *args)[0] == 0
    digests = shard_digests(out)
    code, _, err = run_cli(capsys, *args[:-1])
    assert code == 0 and "already complete" in err
    assert shard_digests(out) == digests


def test_verify_catches_a_flipped_byte(tiny_cache, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_cache, copy)
    code, out, _ = run_cli(capsys, "verify", copy)
    assert code == 0 and "ok: 3 shards, 300 rows" in out
    shard = copy / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", copy)
    assert_one_line_error(code, err, "shard-00001.arrow", "checksum")


def test_info_reports_the_cache(tiny_cache, capsys):
    code, out, _ = run_cli(capsys, "info", tiny_cache)
    assert code == 0
    assert "300 in 3 shard(s)" in out and "dim         32" in out and "tokens/row" in out


def test_bad_utf8_replace_skip_error(tmp_path, teacher_dir, capsys):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"First good sentence.\nBroken \xff\xfe bytes here.\nThird good sentence.\n")
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus, tmp_path / "r")[:-1])
    assert code == 0 and f"{corpus}:2" in err
    assert open_cache(tmp_path / "r").texts()[1] == "Broken \ufffd\ufffd bytes here."
    assert run_cli(capsys, *base_args(teacher_dir, corpus, tmp_path / "s", "--bad-utf8", "skip"))[0] == 0
    assert open_cache(tmp_path / "s").texts() == ["First good sentence.", "Third good sentence."]
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus, tmp_path / "e", "--bad-utf8", "error"))
    assert_one_line_error(code, err, f"{corpus}:2", "invalid UTF-8")


def test_a_5mb_line_is_truncated_not_loaded(tmp_path, teacher_dir, capsys):
    corpus = tmp_path / "huge.txt"
    corpus.write_text("Short one.\n" + "word " * 1_000_000 + "\nAnother short one.\n")
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus, tmp_path / "out"))
    assert code == 0, err
    cache = open_cache(tmp_path / "out")
    assert len(cache) == 3
    assert cache.token_stats()["max"] == 64


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_corpus,needles", [
    (lambda p: p / "missing.txt", ["missing.txt", "no such file"]),
    (lambda p: p, ["is a directory"]),
    (lambda p: write(p / "empty.txt", ""), ["no non-blank line"]),
    (lambda p: write(p / "blank.txt", "\n \n\n"), ["no non-blank line"]),
    (lambda p: p / "nothing-*.txt", ["glob matches no file"]),
    (lambda p: write(p / "t.jsonl", '{"a": "x"}\n'), ["--text-column"]),
])
def test_bad_corpus_is_one_line(tmp_path, teacher_dir, capsys, make_corpus, needles):
    corpus = make_corpus(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus, out))
    assert_one_line_error(code, err, *needles)
    assert not list(out.glob("shard-*"))


@pytest.mark.parametrize("flags,needle", [
    (["--dtype", "float8"], "--dtype"),
    (["--pooling", "max"], "--pooling max"),
    (["--pooling", "mean,mean"], "--pooling"),
    (["--max-length", "0"], "--max-length"),
    (["--format", "xml"], "--format"),
    (["--shard-size", "0"], "--shard-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--max-tokens", "10"], "--max-tokens"),
    (["--precision", "int4"], "--precision"),
    (["--normalize", "maybe"], "--normalize"),
    (["--bad-utf8", "ignore"], "--bad-utf8"),
    (["--max-length", "abc"], "--max-length"),
    (["--device", "tpu"], "--device"),
])
def test_bad_flag_values_are_one_line(tmp_path, teacher_dir, corpus_file, capsys, flags, needle):
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus_file, tmp_path / "out", *flags))
    assert_one_line_error(code, err, needle)


def test_unknown_teacher_fails_fast_offline(tmp_path, corpus_file, capsys):
    start = time.monotonic()
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus_file, "--out", tmp_path / "o", "--quiet",
                           "--teacher", "no-such-org/no-such-model")
    assert_one_line_error(code, err, "no-such-org/no-such-model", "offline")
    assert time.monotonic() - start < 20


def test_unwritable_output_is_one_line(tmp_path, teacher_dir, corpus_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, *base_args(teacher_dir, corpus_file, blocker / "out"))
    assert_one_line_error(code, err, "--out")


def test_disk_full_removes_partial_shard_keeps_complete_ones(tmp_path, teacher_dir, corpus_file, capsys,
                                                             monkeypatch):
    from teacher_cache import shards

    real_write = shards.ShardWriter._write_arrow
    calls = {"n": 0}

    def write_then_fill_disk(self, path, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, path, rows)

    monkeypatch.setattr(shards.ShardWriter, "_write_arrow", write_then_fill_disk)
    out = tmp_path / "out"
    args = base_args(teacher_dir, corpus_file, out, "--shard-size", "100")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "shard-00001.arrow", "no space left")
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.arrow"]
    monkeypatch.setattr(shards.ShardWriter, "_write_arrow", real_write)
    assert run_cli(capsys, *args)[0] == 0
    assert len(open_cache(out)) == 300


def test_readers_refuse_non_caches(tmp_path, capsys):
    code, _, err = run_cli(capsys, "info", tmp_path)
    assert_one_line_error(code, err, "not a teacher cache")
    code, _, err = run_cli(capsys, "verify", tmp_path / "nope")
    assert_one_line_error(code, err, "no such cache folder")
