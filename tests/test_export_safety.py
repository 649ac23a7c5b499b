"""tc export and tc probe never lose or mix what they write: an --out overlapping --model is refused before anything
is removed, --out is locked for the run, SIGTERM cleans up and exits 143, a killed export's temporary folder is
removed by the next one, a full disk is one line naming the flag and the file, and a failed probe leaves no plot."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from student import Student, StudentConfig
from teacher_cache import open_cache
from tests.helpers import one_line, run_cli
from tests.test_export import make_student

# Runs `tc ARGS` with write_onnx paused once the export is written into its temporary folder (that folder's path
# goes to the file argv[1]), so that a test can race, signal or kill an export in the middle.
PAUSED_EXPORT = """
import pathlib, sys, time
import student.export.run as export
write, ready = export.write_onnx, pathlib.Path(sys.argv[1])
def paused(student, folder, dtype):
    write(student, folder, dtype)
    ready.write_text(str(folder))
    time.sleep(300)
export.write_onnx = paused
sys.argv = ["tc", *sys.argv[2:]]
from pipeline.cli import run
run()
"""


@pytest.fixture(scope="module")
def stu(tmp_path_factory) -> Path:
    """A tiny static student (exports in about a second)."""
    folder = tmp_path_factory.mktemp("export_safety") / "stu"
    make_student("static", folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def paused_export(ready: Path, *args) -> tuple[subprocess.Popen, Path]:
    """Start `tc export ARGS` paused mid-export; return it and its temporary folder once it is there."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_EXPORT, str(ready), "export", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the export never paused: {proc.communicate()}")
        time.sleep(0.1)
    return proc, Path(ready.read_text())


def finish(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    """Send `sig` to a paused export; return its exit code and stderr."""
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


# ------------------------------------------------------------------------------------------- export: overlap


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_an_out_that_overlaps_the_model_is_refused_before_anything_is_removed(where, tmp_path, capsys):
    """--force used to delete the student it exports (--out holding it), or write into it."""
    model = tmp_path / "exp" / "stu"
    make_student("static", model)
    out, words = {"equal": (model, "is the --model folder"), "inside": (model / "sub", f"is inside --model {model}"),
                  "containing": (tmp_path / "exp", f"holds --model {model}")}[where]
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "export", "--model", model, "--out", out, "--to", "onnx", "--force")
    one_line(code, err, f"--out {out}: {words}; name a new folder")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_out_dot_and_a_folder_above_are_one_line(stu, tmp_path, capsys, monkeypatch):
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    for out in (".", "..", here):
        code, _, err = run_cli(capsys, "export", "--model", stu, "--out", out, "--to", "onnx", "--force")
        one_line(code, err, f"--out {out}: is the current folder or one above it; name a new folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["here", "keep.txt", "work"]
    # a new folder below the current one works
    code, _, err = run_cli(capsys, "export", "--model", stu, "--out", "onnx_model", "--to", "onnx")
    assert code == 0, err
    assert (here / "onnx_model" / "model.onnx").exists() and not (here / "onnx_model" / ".tc.lock").exists()


# ------------------------------------------------------------------------------------ export: lock, signals


def test_a_second_export_into_the_same_out_is_refused_naming_the_first(stu, tmp_path, capsys):
    out = tmp_path / "o"
    first, tmp = paused_export(tmp_path / "ready", "--model", stu, "--out", out, "--to", "onnx")
    try:
        code, _, err = run_cli(capsys, "export", "--model", stu, "--out", out, "--to", "onnx", "--force")
        one_line(code, err, f"--out {out}: in use by pid {first.pid}", "tc export")
        assert tmp.is_dir()  # the first export's work is untouched
    finally:
        code, _ = finish(first, signal.SIGINT)
    assert code == 130


def test_sigterm_removes_the_temporary_folder_and_exits_143(stu, tmp_path):
    out = tmp_path / "o"
    proc, tmp = paused_export(tmp_path / "ready", "--model", stu, "--out", out, "--to", "onnx")
    assert tmp.parent == tmp_path and tmp.name.startswith(".o.export-tmp-") and any(tmp.iterdir())
    code, err = finish(proc, signal.SIGTERM)
    assert code == 143, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.strip()] == [
        "terminated (SIGTERM): complete shards and checkpoints are kept; rerun the same command to resume"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no temporary folder, no --out


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_run(stu, tmp_path, capsys):
    out = tmp_path / "o"
    proc, tmp = paused_export(tmp_path / "ready", "--model", stu, "--out", out, "--to", "onnx")
    code, _ = finish(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert tmp.is_dir() and any(tmp.iterdir())  # SIGKILL leaves it: nothing in the process can remove it
    older = tmp_path / ".o.export-tmp-999999999-old"  # a killed export's swap, older still
    older.mkdir()
    (older / "model.onnx").write_bytes(b"partial")
    code, _, err = run_cli(capsys, "export", "--model", stu, "--out", out, "--to", "onnx")
    assert code == 0, err
    assert f"removed {tmp}" in err and f"removed {older}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "ready"]
    assert (out / "model.onnx").exists() and json.loads((out / "export.json").read_text())["format"] == "onnx"


def test_force_replaces_an_export_whole_with_or_without_renameat2(stu, tmp_path, capsys, monkeypatch):
    import student.export.run as export_module

    out = tmp_path / "o"
    for exchange_works in (True, False):
        if not exchange_works:
            monkeypatch.setattr(export_module, "exchange", lambda a, b: False)  # rename aside, then into place
        out.mkdir(exist_ok=True)
        (out / "old.txt").write_text("old")
        code, _, err = run_cli(capsys, "export", "--model", stu, "--out", out, "--to", "onnx", "--force")
        assert code == 0, err
        names = sorted(p.name for p in out.iterdir())
        assert "old.txt" not in names and ".tc.lock" not in names and "model.onnx" in names
        assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary or old folder beside it


def test_a_full_disk_names_out_and_the_file_and_writes_nothing(stu, tmp_path, capsys, monkeypatch):
    import student.export.run as export_module

    def full(student, folder, dtype):
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.onnx"))

    monkeypatch.setattr(export_module, "write_onnx", full)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "export", "--model", stu, "--out", out, "--to", "onnx")
    one_line(code, err, f"--out {out}: cannot write model.onnx (no space left on device); nothing written to {out}")
    assert list(tmp_path.iterdir()) == []  # no temporary folder, and the --out the lock made is gone again


# ------------------------------------------------------------------------------------------- probe


@pytest.fixture(scope="module")
def probe_student(tiny_cache, tmp_path_factory) -> Path:
    """An untrained static student with the cache's vocabulary and width."""
    import torch

    torch.manual_seed(0)
    cache = open_cache(tiny_cache)
    folder = tmp_path_factory.mktemp("probe_student") / "s"
    Student.from_tokenizer_dir(StudentConfig(arch="static", emb_dim=16, out_dim=cache.dim),
                               cache.tokenizer_path).save_pretrained(folder)
    return folder


def probe_args(cache: Path, student: Path, report: Path) -> list:
    return ["probe", "--shards", cache, "--student", student, "--report", report, "--k", "5", "--queries", "40",
            "--quiet"]


def full_disk(*args, **kwargs):
    """A plot writer on a full disk (the second plot: the first PNG is already written by then)."""
    path = args[-1]
    Path(path).write_bytes(b"\x89PNG half")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_probe_on_a_full_disk_names_report_and_leaves_no_png(tiny_cache, probe_student, tmp_path, capsys,
                                                               monkeypatch):
    import pipeline.plots as plots

    monkeypatch.setattr(plots, "similarity_scatter", full_disk)
    report = tmp_path / "fresh" / "report"
    code, _, err = run_cli(capsys, *probe_args(tiny_cache, probe_student, report))
    one_line(code, err, f"--report {report}: cannot write similarity_scatter.png (no space left on device)")
    assert list(tmp_path.iterdir()) == []  # the fresh folders the probe made are gone with everything in them


def test_a_failed_probe_keeps_the_earlier_report_whole(tiny_cache, probe_student, tmp_path, capsys, monkeypatch):
    import pipeline.plots as plots

    report = tmp_path / "report"
    assert run_cli(capsys, *probe_args(tiny_cache, probe_student, report))[0] == 0
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in report.iterdir()}
    assert set(before) == {"report.json", "report.md", "agreement_hist.png", "similarity_scatter.png",
                           "agreement_by_length.png"}
    killed = report / ".probe-tmp-killed"  # what a probe killed while writing its files leaves
    killed.mkdir()
    (killed / "agreement_hist.png").write_bytes(b"\x89PNG half")
    monkeypatch.setattr(plots, "agreement_by_length", full_disk)  # the third file: two new PNGs already made
    code, _, err = run_cli(capsys, *probe_args(tiny_cache, probe_student, report))
    one_line(code, err, f"--report {report}: cannot write agreement_by_length.png (no space left on device)")
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in report.iterdir()} == before  # killed's gone
