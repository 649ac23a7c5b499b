"""Benchmark plumbing: run whole processes in turn, read their wall time and peak RSS, describe the machine."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# labelled STS-B train pairs (../shared beside the checkout): a set the recipes may be selected on, never test
STS_TRAIN = ROOT.parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"


def machine() -> str:
    """CPU model, cores, memory and torch build, for the results table."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        if " amx_bf16" in flags or " avx512_bf16" in flags:
            model += " (native bf16)"
    except OSError:
        pass
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def run_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run one command to completion; return (wall seconds, peak RSS MiB of the process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def paired(commands: dict[str, list[str]], runs: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Run the commands in turn (A B C A B C ...), after warm-up rounds; per-command lists of wall and RSS."""
    out = {name: {"wall": [], "rss": []} for name in commands}
    for round_ in range(warmup + runs):
        for name, cmd in commands.items():
            wall, rss = run_process(cmd)
            if round_ >= warmup:
                out[name]["wall"].append(wall)
                out[name]["rss"].append(rss)
                print(f"  {name}: {wall:.2f} s, {rss:.0f} MiB", file=sys.stderr)
    return out


def median(values: list[float]) -> float:
    """Median of a list."""
    return statistics.median(values)


def append_results(section: str) -> None:
    """Append a section (markdown) to benchmarks/RESULTS.md."""
    header = ("# Benchmark results\n\nEvery section was appended by a script in `benchmarks/`; "
              "figures are as measured.\n")
    text = RESULTS.read_text() if RESULTS.exists() else header
    RESULTS.write_text(text.rstrip() + "\n\n" + section.strip() + "\n")


def replace_section(marker: str, section: str) -> None:
    """Put `section` between this marker's comments in RESULTS.md, replacing what was there (else append)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{section.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if start in text and end in text:
        RESULTS.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
    else:
        append_results(block)
