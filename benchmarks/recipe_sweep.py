"""The sweep behind student/training/recipes.py: train variants on one cache, score them on what we may tune on.

Usage: .venv/bin/python -m benchmarks.recipe_sweep [--cache benchmarks/work/cache100k] [--only NAME ...] [--table]
Each variant trains one epoch (unless it says otherwise) and is scored on STS-B dev and STS-B train (labelled
pairs we may select on; never STS-B test) and on the training run's held-out validation rows (mean cosine and
kNN@10 agreement with the teacher). Every finished row is appended to benchmarks/work/sweep.jsonl at once and
skipped on a rerun, so a sweep can span sessions; --table appends the table of all rows to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import STS_TRAIN, append_results, machine

ROWS = Path("benchmarks/work/sweep.jsonl")
STATIC = {"arch": "static", "emb_dim": 384, "epochs": 1, "batch_size": 128, "lr": 1e-3, "emb_lr": 1e-2,
          "init_embeddings": "outputs", "token_weights": True, "loss": "cosine"}
# name -> TrainConfig overrides; 'init-*' rows train with a learning rate of ~0 to score the starting point
VARIANTS: dict[str, dict] = {
    "init-out-sif": STATIC | {"lr": 1e-9, "emb_lr": 1e-9, "max_rows": 20_000},
    "init-out-nosif": STATIC | {"lr": 1e-9, "emb_lr": 1e-9, "max_rows": 20_000, "sif": 0.0},
    "out-w-cos-e1e-2": STATIC,
    "out-now-cos-e1e-2": STATIC | {"token_weights": False},
    "teach-cos-e1e-2": STATIC | {"init_embeddings": "teacher", "token_weights": False},
    "out-w-contr-e1e-2": STATIC | {"loss": "contrastive"},
    "out-w-cos+rel-e1e-2": STATIC | {"loss": "cosine+relational"},
    "out-w-cos-e3e-2": STATIC | {"emb_lr": 3e-2},
    "out-w-cos-e3e-3": STATIC | {"emb_lr": 3e-3},
    "sif1e-4": STATIC | {"sif": 1e-4},
    "sif1e-2": STATIC | {"sif": 1e-2},
    "cnn-k3-h256-static": STATIC | {"arch": "cnn", "hidden": 256, "kernel_sizes": [3], "static_path": True},
}


def done_rows() -> dict[str, dict]:
    """Rows already measured, by name."""
    if not ROWS.exists():
        return {}
    return {row["name"]: row for row in map(json.loads, ROWS.read_text().splitlines())}


def run_variant(name: str, cache: str) -> dict:
    """Train one variant into benchmarks/work/sweep/NAME and score it; append its row."""
    from pipeline.sts import load_task, read_stsbenchmark, sts_spearman
    from student import Student
    from student.training.train import TrainConfig, train

    out = f"benchmarks/work/sweep/{name}"
    started = time.perf_counter()
    metrics = train(TrainConfig(shards=cache, out=out, force=True, quiet=True, checkpoint_every=0, **VARIANTS[name]))
    model = Student.from_pretrained(out)

    def encode(texts):
        return model.encode(texts, batch_size=256)

    row = {"name": name, "dev": round(sts_spearman(encode, load_task("sts-b-dev")), 2),
           "ststrain": round(sts_spearman(encode, read_stsbenchmark(STS_TRAIN, "STS-B train")), 2),
           **{k: round(v, 4) for k, v in metrics["final"].items()},
           "init": {k: round(v, 4) for k, v in metrics["initial"].items()},
           "secs": round(time.perf_counter() - started), "cache": cache, "cfg": VARIANTS[name]}
    with ROWS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def table() -> str:
    """Markdown table of every measured row."""
    lines = ["| variant | STS-B dev | STS-B train | val cosine | val kNN@10 | wall s | settings |",
             "|---|---|---|---|---|---|---|"]
    for row in done_rows().values():
        lines.append(f"| {row['name']} | {row['dev']:.2f} | {row['ststrain']:.2f} | {row['val_cosine']:.3f} | "
                     f"{row['knn@10']:.3f} | {row['secs']} | `{json.dumps(row['cfg'])}` |")
    return "\n".join(lines)


def main() -> None:
    """Run the variants not yet measured (or those named), then optionally write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="benchmarks/work/cache100k")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or VARIANTS:
        if name not in done_rows():
            run_variant(name, args.cache)
    if args.table:
        append_results("\n".join([
            f"## Student recipe sweep ({time.strftime('%Y-%m-%d')})", "",
            f"Machine: {machine()}. `python -m benchmarks.recipe_sweep` on the 100,000-sentence Wikipedia cache "
            "(all-MiniLM-L6-v2, mean pooling), one epoch each unless the settings say otherwise; scored on STS-B "
            "dev and STS-B train (never test) and the run's 2,000 held-out validation rows. Wall times are not "
            "comparable between rows (other jobs shared the 2 cores).", "", table()]))


if __name__ == "__main__":
    main()
