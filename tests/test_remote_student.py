"""tc train-student --out s3://bucket/prefix through a real S3 server (moto, 127.0.0.1): the student published object
by object equals a local run's, a --max-steps run resumes from the remote checkpoint, the --out rules in one line,
and --force keeps the old remote student until the new run's first save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from student import Student
from student.training.student_out import student_staging_dir
from teacher_cache.storage import Store
from tests.helpers import one_line, run_cli

pytest.importorskip("moto.server")

# a 16-wide BiLSTM on the 300-row tiny cache, one thread: 17 steps an epoch, no checkpoint but the epoch ends'
TINY = ["--recipe", "paper-512", "--emb-dim", "16", "--hidden", "16", "--batch-size", "16", "--lr", "0.01",
        "--val-rows", "30", "--checkpoint-every", "0", "--seed", "3", "--quiet"]


def train_args(cache: Path, out: str | Path, *more: str) -> list[str]:
    """`tc train-student` of the tiny student on `cache` into `out`."""
    return ["train-student", "--shards", cache, "--out", out, *TINY, *more]


def download(url: str, folder: Path) -> Path:
    """Every object under `url` as a file under `folder` (what a user's `aws s3 cp --recursive` would give)."""
    store = Store.open(url)
    for name in store.list():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(store.read_bytes(name))
    return folder


def assert_same_weights(a: Path, b: Path) -> None:
    """The tensors of two model.safetensors are equal, bit for bit (the headers may differ)."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for key in x:
        assert np.array_equal(x[key], y[key]), key


def recording(monkeypatch, method: str) -> list[str]:
    """The names passed to Store.<method> from now on, in order (the call itself goes through)."""
    seen: list[str] = []
    real = getattr(Store, method)

    def record(self, name, *args, **kwargs):
        seen.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Store, method, record)
    return seen


def test_a_student_trained_into_a_bucket_equals_a_local_run(s3_env, tiny_cache, tmp_path, capsys, monkeypatch):
    url = f"s3://{s3_env}/students/x"
    puts = recording(monkeypatch, "put")
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1"))
    assert code == 0, err
    # the epoch end's checkpoint first, then the student's files, training_args.json and config.json last
    assert puts[:2] == ["checkpoint/checkpoint.pt", "checkpoint/trainer_state.json"]
    assert puts[-2:] == ["training_args.json", "config.json"] and "model.safetensors" in puts[2:-2]
    local = tmp_path / "local"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, local, "--epochs", "1"))
    assert code == 0, err
    names = Store.open(url).list()
    assert "config.json" in names and "model.safetensors" in names and "training_args.json" in names
    assert not [n for n in names if n.startswith("checkpoint/")]  # dropped once the student is up
    # the same files as a local run's folder
    assert set(names) == {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    got = download(url, tmp_path / "downloaded")
    student = Student.from_pretrained(got)
    assert_same_weights(got / "model.safetensors", local / "model.safetensors")
    texts = ["A sentence.", "Another, longer sentence."]
    assert np.array_equal(student.encode(texts), Student.from_pretrained(local).encode(texts))
    assert json.loads((got / "training_args.json").read_text())["out"] == url
    staging = student_staging_dir(url)
    assert not staging.exists() or not any(staging.iterdir())  # the scratch copy is gone once published


def test_a_stopped_run_resumes_from_the_remote_checkpoint(s3_env, tiny_cache, tmp_path, capsys):
    url = f"s3://{s3_env}/students/resumed"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "2", "--max-steps", "5"))
    assert code == 0, err
    store = Store.open(url)
    assert store.list() == ["checkpoint/checkpoint.pt", "checkpoint/trainer_state.json"]  # no student yet
    assert json.loads(store.read_bytes("checkpoint/trainer_state.json"))["step"] == 5
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "2"))
    one_line(code, err, f"--out {url}: holds an earlier training run; pass --resume")
    # the staging folder is emptied whenever a run takes it: the resume has only the store to go by
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "2", "--resume"))
    assert code == 0, err
    whole = tmp_path / "whole"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, whole, "--epochs", "2"))
    assert code == 0, err
    got = download(url, tmp_path / "downloaded")
    assert not (got / "checkpoint").exists()
    metrics = json.loads((got / "metrics.json").read_text())
    assert metrics["steps"] == 34 and metrics["rows_seen"] == 540
    resumed, uninterrupted = load_file(got / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:  # as tests/test_student_train.py test_resume_equals_uninterrupted: equal up to float noise
        np.testing.assert_allclose(resumed[key], uninterrupted[key], atol=1e-6, rtol=1e-5)
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "2", "--resume"))
    one_line(code, err, f"--resume: {url} holds a finished student and no checkpoint; nothing to resume")


def test_a_prefix_holding_other_objects_is_refused_in_one_line_and_force_keeps_them(s3_env, tiny_cache, capsys):
    url = f"s3://{s3_env}/students/busy"
    store = Store.open(url)
    store.put("notes.txt", "mine")
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1"))
    line = one_line(code, err, f"--out {url}: not empty (holds notes.txt); choose an empty prefix or pass --force")
    assert err.strip() == line
    assert store.list() == ["notes.txt"]
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1", "--force"))
    assert code == 0, err
    assert store.read_bytes("notes.txt") == b"mine" and store.exists("config.json")


@pytest.mark.parametrize("out", ["caches/tiny", "caches/tiny/student", "caches"])
def test_an_out_overlapping_the_remote_cache_is_refused(s3_env, out):
    from student.training.student_out import StudentOut
    from teacher_cache.base.errors import UserError

    cache, url = f"s3://{s3_env}/caches/tiny", f"s3://{s3_env}/{out}"
    with pytest.raises(UserError, match=rf"^--out {url}: overlaps the cache {cache}; choose another prefix$"):
        StudentOut.open(url, cache).check(resume=False, force=True)
    StudentOut.open(f"s3://{s3_env}/caches/tiny-student", cache).check(resume=False, force=False)  # a neighbour


def test_force_keeps_the_old_remote_student_until_the_first_save(s3_env, tiny_cache, capsys, monkeypatch):
    url = f"s3://{s3_env}/students/kept"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1"))
    assert code == 0, err
    store = Store.open(url)
    before = {name: store.read_bytes(name) for name in store.list()}
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1", "--force", "--lr", "1e30"))
    one_line(code, err, "training diverged at epoch 1 step ", f"nothing was saved in {url}; --force removed nothing")
    assert {name: store.read_bytes(name) for name in store.list()} == before  # the old student, whole
    removes = recording(monkeypatch, "remove")
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1", "--force", "--seed", "4"))
    assert code == 0, err
    assert removes[0] == "config.json"  # at the first save, the mark of a student first: no reader sees half of one
    assert store.list() == sorted(before) and store.read_bytes("model.safetensors") != before["model.safetensors"]


def test_probe_and_export_take_a_remote_student(s3_env, tiny_cache, tmp_path, capsys, glue_dir):
    url = f"s3://{s3_env}/students/served"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "1"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "probe", "--shards", tiny_cache, "--student", url, "--report", tmp_path / "probe",
                           "--queries", "40", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert report["student"] == url and report["rows_probed"] == 300
    code, _, err = run_cli(capsys, "export", "--model", url, "--to", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, err
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["source"] == url
    from student import OnnxStudent

    texts = ["A sentence.", "Another, longer sentence."]
    local = download(url, tmp_path / "downloaded")
    np.testing.assert_allclose(OnnxStudent.from_pretrained(tmp_path / "onnx").encode(texts),
                               Student.from_pretrained(local).encode(texts), atol=1e-4)
    np.testing.assert_array_equal(Student.from_pretrained(url).encode(texts),  # a URL, downloaded first
                                  Student.from_pretrained(local).encode(texts))
    code, _, err = run_cli(capsys, "finetune", "--model", url, "--task", "sst2", "--epochs", "1", "--out",
                           tmp_path / "ft", "--data-dir", glue_dir, "--max-train-rows", "40", "--max-eval-rows", "20",
                           "--quiet")
    assert code == 0, err


def test_a_prefix_without_a_whole_student_is_one_line(s3_env, tiny_cache, tmp_path, capsys):
    url = f"s3://{s3_env}/students/stopped"
    code, _, err = run_cli(capsys, *train_args(tiny_cache, url, "--epochs", "2", "--max-steps", "3"))
    assert code == 0, err  # a checkpoint, and no config.json yet
    code, _, err = run_cli(capsys, "export", "--model", url, "--to", "onnx", "--out", tmp_path / "onnx")
    line = one_line(code, err, f"--model {url}: no student there (no config.json")
    assert err.strip() == line and not (tmp_path / "onnx").exists()
