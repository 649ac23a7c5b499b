"""tc export --out s3://... and tc probe --report s3://... through a real S3 server (moto, 127.0.0.1): the objects
uploaded load and equal a local run's, config.json (an export) and report.json (a report) go up last, a non-empty
prefix is refused in one line, --force replaces only an export's own names and only once the new export is whole,
and a URL of an unknown scheme is one line."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from student import Student, StudentConfig
from teacher_cache import open_cache
from teacher_cache.remote_out import staging_dir
from teacher_cache.storage import Store
from tests.helpers import one_line, run_cli
from tests.test_export import TEXTS, make_student
from tests.test_remote_student import download, recording

pytest.importorskip("moto.server")


def export_args(model: Path, to: str, out: str | Path, *more: str) -> list:
    """`tc export` of the student folder `model` to format `to` into `out`."""
    return ["export", "--model", model, "--to", to, "--out", out, *more]


def vectors(to: str, folder: Path) -> np.ndarray:
    """TEXTS encoded by the exported folder, loaded as its users load it (model2vec, or OnnxStudent)."""
    if to == "model2vec":
        from model2vec import StaticModel

        return StaticModel.from_pretrained(folder).encode(TEXTS, use_multiprocessing=False)
    from student import OnnxStudent

    return OnnxStudent.from_pretrained(folder, threads=1).encode(TEXTS)


def staging_is_empty(kind: str, url: str) -> bool:
    """Whether the URL's staging folder is gone or empty (the scratch copy is dropped once published)."""
    folder = staging_dir(kind, url)
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("to,arch", [("model2vec", "static"), ("onnx", "bilstm")])
def test_an_export_into_a_bucket_equals_the_local_export(to, arch, s3_env, tmp_path, capsys, monkeypatch):
    pytest.importorskip("model2vec" if to == "model2vec" else "onnxruntime")
    make_student(arch, tmp_path / "s")
    local = tmp_path / "local"
    code, _, err = run_cli(capsys, *export_args(tmp_path / "s", to, local))
    assert code == 0, err
    url = f"s3://{s3_env}/exports/x"
    puts = recording(monkeypatch, "put")
    code, out, err = run_cli(capsys, *export_args(tmp_path / "s", to, url))
    assert code == 0, err
    assert out.startswith(f"{url}: {to} (float32)")
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert Store.open(url).list() == files  # the local export's files, every one, nothing else
    assert sorted(puts) == files and puts[-1] == "config.json"  # what a loader reads first: last
    got = download(url, tmp_path / "downloaded")
    assert np.array_equal(vectors(to, got), vectors(to, local))
    assert json.loads((got / "export.json").read_text())["format"] == to
    assert staging_is_empty("staging-exports", url)


def test_a_busy_prefix_is_refused_and_force_replaces_only_an_exports_names(s3_env, tmp_path, capsys, monkeypatch):
    pytest.importorskip("model2vec")
    pytest.importorskip("onnxruntime")
    make_student("static", tmp_path / "s")
    url = f"s3://{s3_env}/exports/x"
    store = Store.open(url)
    store.put("notes.txt", "mine")
    code, _, err = run_cli(capsys, *export_args(tmp_path / "s", "onnx", url))
    line = one_line(code, err, f"--out {url}: not empty (holds notes.txt); choose an empty prefix or pass --force "
                               "(which removes only an export's files)")
    assert err.strip() == line
    assert store.list() == ["notes.txt"]
    code, _, err = run_cli(capsys, *export_args(tmp_path / "s", "onnx", url, "--force"))
    assert code == 0, err
    assert store.read_bytes("notes.txt") == b"mine" and store.exists("model.onnx")
    onnx_export = {name: store.read_bytes(name) for name in store.list()}

    # a --force export that fails removes nothing: the earlier export stays whole
    import student.export.run as export_module

    def full_disk(student, folder, dtype):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    with monkeypatch.context() as patched:  # (monkeypatch.undo would drop s3_env's settings too)
        patched.setattr(export_module, "write_model2vec", full_disk)
        code, _, err = run_cli(capsys, *export_args(tmp_path / "s", "model2vec", url, "--force"))
    one_line(code, err, f"--out {url}: cannot write model.safetensors (no space left on device); nothing written to "
                        f"{url}")
    assert {name: store.read_bytes(name) for name in store.list()} == onnx_export

    removes = recording(monkeypatch, "remove")
    code, _, err = run_cli(capsys, *export_args(tmp_path / "s", "model2vec", url, "--force"))
    assert code == 0, err
    assert removes[0] == "config.json"  # the mark of the earlier export first: no reader mixes the two
    names = store.list()
    assert "model.onnx" not in names and "model.safetensors" in names  # an export's own names, replaced whole
    assert store.read_bytes("notes.txt") == b"mine"  # the user's object stays
    assert json.loads(store.read_bytes("export.json"))["format"] == "model2vec"
    assert json.loads(store.read_bytes("config.json"))["model_type"] == "model2vec"


@pytest.fixture
def probe_student(tiny_cache, tmp_path) -> Path:
    """An untrained static student with the cache's vocabulary and width."""
    import torch

    torch.manual_seed(0)
    cache = open_cache(tiny_cache)
    folder = tmp_path / "student"
    Student.from_tokenizer_dir(StudentConfig(arch="static", emb_dim=16, out_dim=cache.dim),
                               cache.tokenizer_path).save_pretrained(folder)
    return folder


def probe_args(cache: Path, student: Path, report: str | Path) -> list:
    """`tc probe` of `student` on `cache`, its report into `report`."""
    return ["probe", "--shards", cache, "--student", student, "--report", report, "--k", "5", "--queries", "40",
            "--quiet"]


def test_a_probe_report_goes_into_a_bucket_report_json_last(s3_env, tiny_cache, probe_student, tmp_path, capsys,
                                                            monkeypatch):
    local = tmp_path / "local"
    code, _, err = run_cli(capsys, *probe_args(tiny_cache, probe_student, local))
    assert code == 0, err
    url = f"s3://{s3_env}/reports/x"
    puts = recording(monkeypatch, "put")
    code, out, err = run_cli(capsys, *probe_args(tiny_cache, probe_student, url))
    assert code == 0, err
    assert f"report in {url}/report.md" in out
    store = Store.open(url)
    assert store.list() == sorted(p.name for p in local.iterdir())
    assert puts[-1] == "report.json" and "report.md" in puts[:-1]
    remote, here = json.loads(store.read_bytes("report.json")), json.loads((local / "report.json").read_text())
    assert remote["rows_probed"] == here["rows_probed"] == 300
    assert remote["knn@5_agreement"] == here["knn@5_agreement"]
    assert store.read_bytes("report.md").decode().startswith("# Probe: ")
    assert staging_is_empty("staging-reports", url)


@pytest.mark.parametrize("command", ["export", "probe"])
def test_an_unknown_url_scheme_is_one_line(command, tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_student("static", tmp_path / "s")
    url = "nosuch://bucket/x"
    args = export_args(tmp_path / "s", "onnx", url) if command == "export" else probe_args(tiny_cache,
                                                                                           tmp_path / "s", url)
    code, _, err = run_cli(capsys, *args)
    line = one_line(code, err, f"{url}: unknown storage scheme nosuch://")
    assert err.strip() == line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no folder made of the URL
