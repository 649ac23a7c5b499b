"""Scale-out: tc encode --engine ray (2 workers) vs the local engine; DDP 2 processes vs 1; 100M sentences on paper.

Usage: .venv/bin/python benchmarks/scale.py [--rows 2000] [--runs 3] [--parts ray,ddp,paper] [--gpu-rate S/s]
       [--gpus 1,8,32] [--gpu-hour-price USD]
Appends a section to benchmarks/RESULTS.md.

(a) Same 2,000 real sentences (data/sample_corpus.txt), same teacher (all-MiniLM-L6-v2), same shards; whole
    process against whole process, so Ray's start-up, the actors' teacher loads and the driver's own teacher load
    count against it. Local uses every core in one process; Ray runs 2 actors of 1 thread each.
(b) One `tc train-student` epoch over the cache from (a): 1 process (all cores) vs --nproc 2 (1 thread each);
    sentences/s from metrics.json (training loop only) and whole-process wall.
(c) Hours for 100M sentences on N GPUs = 1e8 / (N x per-GPU rate x Ray efficiency), the efficiency being
    local/Ray wall from (a); the per-GPU rate is an argument (measure it with benchmarks/encode.py on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, append_results, machine, median, paired, run_process

SENTENCES = 100_000_000


def make_corpus(rows: int, path: Path) -> Path:
    """The first `rows` sentences of the bundled sample corpus."""
    lines = (ROOT / "data" / "sample_corpus.txt").read_text().splitlines(keepends=True)[:rows]
    path.write_text("".join(lines))
    return path


def bench_ray(tmp: Path, rows: int, runs: int, shard_size: int, precision: str) -> tuple[list[str], float]:
    """Table rows for (a) and the median local/Ray wall ratio (the efficiency of the Ray path)."""
    corpus = make_corpus(rows, tmp / "corpus.txt")
    tc = str(Path(sys.executable).parent / "tc")
    base = ["encode", "--corpus", str(corpus), "--shard-size", str(shard_size), "--precision", precision,
            "--force", "--quiet"]
    commands = {
        "local engine (1 process, all cores)": [tc, *base, "--out", str(tmp / "local")],
        "--engine ray --workers 2 (1 CPU each)": [tc, *base, "--out", str(tmp / "ray"), "--engine", "ray",
                                                  "--workers", "2"],
    }
    results = paired(commands, runs)
    local, ray_ = (results[name]["wall"] for name in commands)
    ratios = [b / a for a, b in zip(local, ray_, strict=True)]
    from teacher_cache import open_cache

    a, b = open_cache(tmp / "local"), open_cache(tmp / "ray")
    same = [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]
    va, vb = a.vectors(), b.vectors()
    cos = float(((va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)).min())
    lines = [f"| {name} | {median(res['wall']):.1f} | {rows / median(res['wall']):.0f} | {median(res['rss']):.0f} |"
             for name, res in results.items()]
    lines.append(f"\nRay / local wall: **{median(ratios):.2f}x** (min {min(ratios):.2f}, max {max(ratios):.2f}; goal "
                 f"<= 1.15x). Same shards: ids and texts identical, checksums {'identical' if same else 'differ'}, "
                 f"min cosine {cos:.6f}, precision {b.manifest.precision}. Peak RSS is the driver's only "
                 "(Ray's actors are other processes).")
    return lines, 1 / median(ratios)


def bench_ddp(tmp: Path, runs: int, epochs: int, batch_size: int) -> list[str]:
    """Table rows for (b): sentences/s of the training loop and whole-process wall, 1 vs 2 processes."""
    tc = str(Path(sys.executable).parent / "tc")
    cache = tmp / "local"
    if not (cache / "manifest.json").exists():
        raise SystemExit("the DDP part trains on the cache of the Ray part: run --parts ray,ddp")
    rows = []
    for nproc in (1, 2):
        threads = str(max(1, (os.cpu_count() or 2) // nproc))
        rates, walls = [], []
        for _ in range(runs):
            out = tmp / f"student{nproc}"
            cmd = [tc, "train-student", "--shards", str(cache), "--out", str(out), "--force", "--quiet",
                   "--epochs", str(epochs), "--batch-size", str(batch_size), "--checkpoint-every", "0",
                   "--nproc", str(nproc)]
            wall, _ = run_process(cmd, env={"OMP_NUM_THREADS": threads})
            metrics = json.loads((out / "metrics.json").read_text())
            rates.append(metrics["sentences_per_second"])
            walls.append(wall)
            final = metrics["final"]
        rows.append(f"| {nproc} x {threads} thread(s) | {median(rates):.0f} | {median(walls):.1f} | "
                    f"{final.get('val_mse', float('nan')):.4f} | {final.get('val_cosine', float('nan')):.4f} |")
    return rows


def paper(rate: float | None, gpus: list[int], efficiency: float | None, price: float | None) -> list[str]:
    """Table rows for (c): hours (and cost) of 100M sentences on N GPUs at the given per-GPU rate."""
    if rate is None:
        return ["Per-GPU rate: not measured (no GPU in this session); rerun with --gpu-rate SENTENCES_PER_S."]
    eff = efficiency or 1.0
    rows = ["| GPUs | hours | GPU-hours | cost |", "|---|---|---|---|"]
    for n in gpus:
        hours = SENTENCES / (n * rate * eff) / 3600
        cost = f"{hours * n * price:,.0f} USD" if price else "n/a"
        rows.append(f"| {n} | {hours:,.2f} | {hours * n:,.1f} | {cost} |")
    rows.append(f"\nPer-GPU rate {rate:,.0f} sentences/s (given); Ray efficiency {eff:.2f} "
                f"({'measured in (a)' if efficiency else 'assumed 1.0'}); shard writing and the driver's corpus "
                "reading are assumed not to be the bottleneck (the driver writes ~0.1% of the teacher's time).")
    return rows


def main() -> None:
    """Run the chosen parts and append one section to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=250, help="8 shards of 2,000 rows: both workers busy")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--parts", default="ray,ddp,paper")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--gpu-rate", type=float, default=None, help="measured sentences/s of one GPU (no default)")
    parser.add_argument("--gpus", default="1,8,32")
    parser.add_argument("--gpu-hour-price", type=float, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    lines = [f"## Scale-out: Ray encode, DDP training, 100M on paper ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}. {args.runs} paired runs after a warm-up, medians."]
    efficiency = None
    if "ray" in parts:
        print("(a) ray vs local", file=sys.stderr)
        rows, efficiency = bench_ray(tmp, args.rows, args.runs, args.shard_size, args.precision)
        lines += ["", f"### (a) tc encode, {args.rows:,} sentences, shard size {args.shard_size}, precision "
                      f"{args.precision}, all-MiniLM-L6-v2", "",
                  "| engine | wall s | sentences/s | peak RSS MiB |", "|---|---|---|---|", *rows]
    if "ddp" in parts:
        print("(b) ddp 2 vs 1", file=sys.stderr)
        rows = bench_ddp(tmp, args.runs, args.epochs, args.batch_size)
        lines += ["", f"### (b) tc train-student (bilstm defaults), {args.epochs} epoch(s) of the (a) cache, batch "
                      f"{args.batch_size} per process, CPU (gloo)", "",
                  "| processes | sentences/s (loop) | wall s (whole) | val_mse | val_cosine |", "|---|---|---|---|---|",
                  *rows]
    if "paper" in parts:
        lines += ["", f"### (c) {SENTENCES:,} sentences on N GPUs (on paper)", "",
                  *paper(args.gpu_rate, [int(g) for g in args.gpus.split(",")], efficiency, args.gpu_hour_price)]
    section = "\n".join(lines)
    if not args.no_write:
        append_results(section)
    print(section)


if __name__ == "__main__":
    main()
