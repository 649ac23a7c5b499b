"""Every error a user can cause is one line naming the file or flag; an unexpected one is one line naming the file
its traceback went to, whatever typer/click version is installed."""

from __future__ import annotations

import errno
import gzip
import json
import os
from pathlib import Path

import pytest

from teacher_cache import open_cache
from tests.helpers import error_lines, one_line, run_cli, tc_subprocess


def encode_args(teacher_dir, corpus, out, *extra):
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir),
            "--max-length", "64", "--precision", "fp32", *extra]


# ---- unexpected errors ----------------------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_naming_its_traceback_file(tmp_path, capsys, monkeypatch):
    from teacher_cache.encode import run as encode

    def broken(cfg):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(encode, "encode_corpus", broken)
    monkeypatch.setenv("TC_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("TC_DEBUG", raising=False)
    code, out, err = run_cli(capsys, "encode", "--out", tmp_path / "out")
    line = one_line(code, err, "unexpected RuntimeError: boom", "full traceback in", "TC_DEBUG=1")
    assert err.strip() == line and out == ""
    logs = list((tmp_path / "logs").glob("tc-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "second line" in logs[0].read_text()
    monkeypatch.setenv("TC_DEBUG", "1")
    code, _, err = run_cli(capsys, "encode", "--out", tmp_path / "out")
    assert code == 1 and "Traceback" in err and "boom" in err
    assert len(error_lines(err)) == 1


def test_an_os_error_naming_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    from teacher_cache.encode import run as encode

    def full(cfg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somewhere.bin"))

    monkeypatch.setattr(encode, "encode_corpus", full)
    code, _, err = run_cli(capsys, "encode", "--out", tmp_path / "out")
    one_line(code, err, f"{tmp_path / 'somewhere.bin'}: no space left on device")


def test_every_cause_is_worded_by_reason_and_first_line():
    from teacher_cache.base.errors import NO_SPACE, first_line, reason

    assert reason(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x")) == NO_SPACE == "no space left on device"
    assert reason(RuntimeError("[enforce fail at inline_container.cc:642] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")) == NO_SPACE  # torch.save on a full disk
    assert reason(PermissionError(errno.EACCES, "Permission denied", "/x")) == "Permission denied"
    assert reason(ValueError("first line\nsecond")) == first_line(ValueError("\n first line\nsecond")) == "first line"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert len(reason(ValueError("x" * 500))) == 200 and len(first_line(ValueError("x" * 500), 160)) == 160


# ---- corpus files ---------------------------------------------------------------------------------------------


def corrupt_gzip(path: Path) -> Path:
    data = bytearray(gzip.compress("".join(f"Sentence number {i} of a longer corpus.\n" for i in range(3000))
                                   .encode()))
    for i in range(20, 28):  # inside the deflate stream: zlib.error, not BadGzipFile
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_gzip_is_one_line(tmp_path, teacher_dir, capsys):
    corpus = corrupt_gzip(tmp_path / "c.txt.gz")
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, tmp_path / "out", "--quiet"))
    one_line(code, err, f"{corpus}: not a readable gzip file")


def test_a_truncated_gzip_is_one_line_and_no_thread_traceback(tmp_path, teacher_dir):
    corpus = tmp_path / "t.txt.gz"
    whole = gzip.compress("".join(f"Sentence number {i}.\n" for i in range(3000)).encode())
    corpus.write_bytes(whole[: len(whole) * 2 // 3])
    proc = tc_subprocess(*encode_args(teacher_dir, corpus, tmp_path / "out", "--quiet"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    one_line(proc.returncode, err, f"{corpus}: not a readable gzip file")
    assert err.count("\n") == 1, err  # nothing else: no traceback from the background row counter


def test_a_malformed_jsonl_line_is_located(tmp_path, teacher_dir, capsys):
    corpus = tmp_path / "b.jsonl"
    corpus.write_text('{"text": "a"}\n{"text": "b"\n{"text": "c"}\n')
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, tmp_path / "out", "--text-column", "text",
                                                "--quiet"))
    one_line(code, err, f"{corpus}:2: not valid JSON")


def test_jsonl_rows_without_text_are_counted_apart_from_blank_ones(tmp_path, teacher_dir, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "first"}\n{"other": "b"}\n{"text": null}\n{"text": "  "}\n{"text": "last"}\n')
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, out, "--text-column", "text"))
    assert code == 0, err
    assert "skipped 2 rows with no 'text' value (key missing or null)" in err
    assert "skipped 1 blank lines" in err
    stats = json.loads((out / "manifest.json").read_text())["extra"]["corpus_stats"]
    assert stats["missing_text_rows"] == 2 and stats["blank_lines"] == 1
    assert open_cache(out).texts() == ["first", "last"]


def test_a_csv_row_with_extra_fields_is_warned_with_file_and_line(tmp_path, teacher_dir, capsys):
    corpus = tmp_path / "a.csv"
    corpus.write_text('text,label\nhello world,1\nextra, one,2\n"quoted, fine",3\n')
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, tmp_path / "out", "--text-column", "text"))
    assert code == 0, err
    assert "warning: 1 CSV rows have another number of fields" in err and f"{corpus}:3 (3 fields, header 2)" in err


def test_max_length_beyond_the_teacher_is_said(tmp_path, teacher_dir, corpus_file, capsys):
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus_file, "--out", tmp_path / "out", "--teacher",
                           teacher_dir, "--max-length", "9999", "--precision", "fp32")
    assert code == 0, err
    assert "warning: --max-length 9999: the teacher reads at most 128 word-pieces; using 128" in err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["max_length"] == 128


# ---- full disks -----------------------------------------------------------------------------------------------


def test_full_disk_while_writing_the_manifest(tmp_path, teacher_dir, corpus_file, capsys, monkeypatch):
    real_fsync, calls = os.fsync, {"manifest": 0}

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("manifest.json.tmp"):
            calls["manifest"] += 1
            if calls["manifest"] == 3:  # begun, shard 0 listed, then the disk fills
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    args = encode_args(teacher_dir, corpus_file, out, "--shard-size", "100", "--quiet")
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, f"{out / 'manifest.json'}: cannot write (no space left on device)")
    assert not list(out.glob("*.tmp"))
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert len(open_cache(out)) == 300 and run_cli(capsys, "verify", out)[0] == 0


def test_full_disk_while_writing_the_token_embeddings(tmp_path, teacher_dir, corpus_file, capsys, monkeypatch):
    import safetensors.numpy

    real = safetensors.numpy.save_file

    def save_then_fill_disk(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.numpy, "save_file", save_then_fill_disk)
    out = tmp_path / "out"
    args = encode_args(teacher_dir, corpus_file, out, "--quiet")
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, f"{out / 'token_embeddings.safetensors'}: cannot write (no space left on device)")
    assert not list(out.glob("*.tmp"))
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    assert run_cli(capsys, *args)[0] == 0
    assert run_cli(capsys, "verify", out)[0] == 0


# ---- students, predict, eval, finetune -------------------------------------------------------------------------


def test_a_truncated_student_is_one_line_naming_its_weights(tiny_cache, tmp_path, capsys):
    from student import Student
    from student.config import StudentConfig
    from student.tokenizer import read_tokenizer_files
    from teacher_cache.base.errors import UserError

    folder = tmp_path / "student"
    config = StudentConfig(arch="static", vocab_size=30522, emb_dim=8, out_dim=32, max_length=64)
    Student(config, read_tokenizer_files(tiny_cache / "tokenizer")).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors: unreadable weights"):
        Student.from_pretrained(folder)
    code, _, err = run_cli(capsys, "eval", "--student", folder, "--tasks", "sts-b")
    one_line(code, err, f"{weights}: unreadable weights")


@pytest.mark.parametrize("args,needle", [
    (["eval", "--student", "s", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["predict", "--model", "m", "--input", "i.tsv", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["predict", "--model", "m", "--input", "i.tsv", "--out", "{tmp}/missing/p.tsv"], "does not exist"),
    (["predict", "--model", "m", "--input", "i.tsv", "--out", "{tmp}"], "is a folder"),
])
def test_bad_flags_of_eval_and_predict_are_one_line(tmp_path, capsys, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, needle)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("command", [["predict", "--model", "m", "--input", "i.tsv"],
                                     ["finetune", "--model", "m", "--task", "sst2"]])
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, *command, "--out", tmp_path / "o", "--device", "cuda")
    one_line(code, err, "--device cuda: no CUDA device is available")
