"""STS-B fine-tuning of an SRA student through the cosine head: zero-shot, fine-tuned, and WiSE-FT blends of the two.

    python -m benchmarks.sts_finetune --student benchmarks/work/students/compact-100k [--epochs 3,6] [--seeds 0,1,2]

One run per (epochs, seed): `tc finetune --task stsb --select holdout --interpolate on`, whose metrics.json scores
every blend w = (1 - a) w0 + a w1, a = 1, 0.75, 0.5, 0.25, 0, on the held-out training rows, dev and test. So each
run gives every row of the table: zero-shot (a = 0), fine-tuned (a = 1: the kept epoch), the blend chosen on the
held-out training rows, and the fixed blend a = 0.75 (chosen on STS-B dev in a one-seed study; test never chooses).
Each finished run is a line of benchmarks/work/sts-finetune/<settings>/results.jsonl (a rerun skips it), and
RESULTS.md's section `sts-finetune` is regenerated after each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, replace_section

FIXED_BLEND = "0.75"
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"  # a development checkout's sibling folder (--data-dir)
ROWS = {"zero-shot": "zero-shot cosine (no fine-tuning)", "fine-tuned": "fine-tuned (kept epoch, a = 1)",
        "chosen": "blend chosen on held-out training rows", "fixed": f"blend a = {FIXED_BLEND} (fixed)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: python -m benchmarks.sts_finetune --student "
                                       "benchmarks/work/students/compact-100k --epochs 3,6")
    p.add_argument("--student", required=True, type=Path, help="student folder from tc train-student")
    p.add_argument("--epochs", default="3,6", help="comma-separated epoch counts, one run each per seed")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=5e-4, help="encoder learning rate (the cosine head has no weights)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", type=Path, default=GLUE_DIR, help="GLUE folder (default ../shared/data/glue beside "
                                                                "the checkout)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "sts-finetune")
    return p.parse_args(argv)


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, epochs: int, seed: int, out: Path) -> dict:
    """One fine-tuning run; the figures kept from its metrics.json."""
    from finetune.config import FinetuneConfig
    from finetune.students import finetune_student

    started = time.perf_counter()
    metrics = finetune_student(FinetuneConfig(
        model=str(args.student), task="stsb", out=str(out), data_dir=str(args.data_dir), epochs=epochs, lr=args.lr,
        batch_size=args.batch_size, seed=seed, select="holdout", interpolate="on", force=True, quiet=True))
    blend = metrics["interpolation"]
    return {"epochs": epochs, "seed": seed, "kept_epoch": metrics["selected_epoch"], "alpha": blend["alpha"],
            "scores": blend["scores"], "wall_s": round(time.perf_counter() - started, 1)}


def row_scores(record: dict, row: str) -> dict:
    """The split -> metric scores of one table row in one run."""
    a = {"zero-shot": "0.0", "fine-tuned": "1.0", "chosen": str(record["alpha"]), "fixed": FIXED_BLEND}[row]
    return record["scores"][a]


def cell(records: list[dict], row: str, split: str, metric: str) -> str:
    """'mean ± std' x100 over the seeds."""
    values = [100 * row_scores(r, row)[split][metric] for r in records]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def report(args: argparse.Namespace, records: list[dict]) -> str:
    """The RESULTS.md section."""
    lines = [f"## STS-B fine-tuning: zero-shot, fine-tuned and blended encoders ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}. Student `{args.student}`; `tc finetune --task stsb --select holdout "
             f"--interpolate on`, cosine head with CoSENT, encoder lr {args.lr}, batch {args.batch_size}; kept epoch "
             "and chosen blend by Spearman on held-out training rows (every k-th, at most 2,000); the fixed blend "
             f"a = {FIXED_BLEND} was chosen on STS-B dev (one seed). Scores x100, mean ± sample std over seeds; "
             "test = STS Benchmark test (reported, never used to choose).", "",
             "| epochs | encoder | dev Pearson | dev Spearman | test Pearson | test Spearman | test Spearman − "
             "zero-shot | seeds |", "|---|---|---|---|---|---|---|---|"]
    for epochs in sorted({r["epochs"] for r in records}):
        runs = [r for r in records if r["epochs"] == epochs]
        zero = statistics.fmean(100 * row_scores(r, "zero-shot")["test"]["spearman"] for r in runs)
        for row, label in ROWS.items():
            gain = statistics.fmean(100 * row_scores(r, row)["test"]["spearman"] for r in runs) - zero
            extra = f" (a = {', '.join(str(r['alpha']) for r in runs)})" if row == "chosen" else ""
            lines.append(f"| {epochs} | {label}{extra} | {cell(runs, row, 'dev', 'pearson')} | "
                         f"{cell(runs, row, 'dev', 'spearman')} | {cell(runs, row, 'test', 'pearson')} | "
                         f"{cell(runs, row, 'test', 'spearman')} | {gain:+.2f} | {len(runs)} |")
    walls = [r["wall_s"] for r in records]
    lines += ["", f"Wall per run (fine-tuning plus the five blends' evaluation): {min(walls) / 60:.1f}-"
                  f"{max(walls) / 60:.1f} min. Goal (issue 13): fine-tuned test Spearman >= zero-shot + 3."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every unfinished (epochs, seed), regenerating the section after each."""
    args = parse_args(argv)
    settings = {"student": str(args.student.resolve()), "lr": args.lr, "batch_size": args.batch_size}
    folder = args.work / hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    path = folder / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for epochs in (int(e) for e in args.epochs.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            if any((r["epochs"], r["seed"]) == (epochs, seed) for r in records):
                continue
            log(f"epochs {epochs}, seed {seed}")
            out = folder / f"e{epochs}-s{seed}"
            records.append(run(args, epochs, seed, out))
            with open(path, "a") as fh:
                fh.write(json.dumps(records[-1]) + "\n")
            shutil.rmtree(out)
            replace_section("sts-finetune", report(args, records))
    print(report(args, records))


if __name__ == "__main__":
    main()
