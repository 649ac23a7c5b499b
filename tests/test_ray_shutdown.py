"""tc encode --engine ray under signals: SIGTERM to the driver shuts Ray down and exits 143 with one line (it was a
stack dump and a signal exit), and after a SIGKILL no Ray process it started outlives it (two agents of ~85 MB
each used to run on forever). Each test starts a real local Ray instance in a driver subprocess (~20 s here)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import tc_subprocess

pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

READY = "ray: 1 worker(s) on cpu"  # the driver's line once its actor holds the teacher: every Ray process is up
GONE_WITHIN_S = 15


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """50,000 rows (the sample corpus ten times): minutes of encoding, so the driver is mid-run when signalled."""
    from tests.conftest import SAMPLE

    path = tmp_path_factory.mktemp("ray_signals") / "corpus.txt"
    path.write_text("\n".join(SAMPLE.read_text().splitlines() * 10) + "\n")
    return path


def process_table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, start time, state letter, name) of every process (psutil is not a dependency)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
            fields = data[data.rindex(b")") + 2:].split()
            table[int(entry)] = (int(fields[1]), int(fields[19]), fields[0].decode(), name)
    return table


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, name) of every process below `root`."""
    table = process_table()
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start, _, name) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = (start, name)
                todo.append(pid)
    return found


def running(procs: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The processes of `procs` still running (the same start time; a zombie no longer runs)."""
    table = process_table()
    return {pid: name for pid, (start, name) in procs.items()
            if pid in table and table[pid][1] == start and table[pid][2] != "Z"}


def start_driver(teacher_dir: Path, corpus: Path, out: Path):
    """`tc encode --engine ray --workers 1` as a subprocess; return it and its descendants once Ray is up."""
    proc = tc_subprocess("encode", "--engine", "ray", "--workers", "1", "--corpus", corpus, "--out", out,
                         "--teacher", teacher_dir, "--max-length", "64", "--precision", "fp32", "--shard-size", "500")
    lines, timer = [], threading.Timer(180, proc.kill)  # a driver that hangs silently still ends the wait
    timer.start()
    try:
        for line in proc.stderr:  # the driver logs to stderr
            lines.append(line)
            if READY in line:
                break
    finally:
        timer.cancel()
    if not any(READY in line for line in lines):
        proc.kill()
        raise AssertionError("the Ray driver never started its worker:\n" + "".join(lines) + proc.stderr.read())
    time.sleep(1)  # the watchdog records the tree twice a second
    procs = descendants(proc.pid)
    names = {name for _, name in procs.values()}
    assert {"raylet", "gcs_server"} <= names, names  # this driver started the local Ray instance
    return proc, procs


def wait_gone(procs: dict[int, tuple[int, str]]) -> tuple[dict[int, str], float]:
    """Wait up to GONE_WITHIN_S for `procs` to end; return those still running (killed, for the next test) and
    how long it took."""
    started = time.monotonic()
    while running(procs) and time.monotonic() - started < GONE_WITHIN_S:
        time.sleep(0.25)
    left = running(procs)
    for pid in left:  # processes this test started: never leave them behind, even when it fails
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left, time.monotonic() - started


def test_sigterm_shuts_ray_down_and_exits_143_with_one_line(teacher_dir, long_corpus, tmp_path):
    proc, procs = start_driver(teacher_dir, long_corpus, tmp_path / "cache")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    left, seconds = wait_gone(procs)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == ("terminated (SIGTERM): complete shards and checkpoints are kept; rerun the same "
                                   "command to resume"), err
    # one line about it: no "*** SIGTERM received" stack dump from Ray's C++ handler, no traceback
    assert not [line for line in lines[:-1] if "SIGTERM" in line or "Traceback" in line or "@ 0x" in line], err
    assert not left, f"still running {seconds:.0f} s after the driver ended: {left}"
    assert not (tmp_path / "cache" / ".tc.lock").exists()  # the folder lock was released on the way out


def test_no_ray_process_outlives_a_driver_killed_with_sigkill(teacher_dir, long_corpus, tmp_path):
    proc, procs = start_driver(teacher_dir, long_corpus, tmp_path / "cache")
    proc.kill()
    proc.communicate(timeout=30)
    left, seconds = wait_gone(procs)
    assert not left, f"still running {seconds:.0f} s after the driver was killed: {left}"
