"""The sweep behind student/training/recipes.py: train variants on one cache, score them on what we may tune on.

Usage: .venv/bin/python -m benchmarks.recipe_sweep [--cache benchmarks/work/cache100k] [--max-rows N]
           [--version N] [--only NAME ...] [--table]
Example (#24's BiLSTM levers, 100k rows of the 4.3M cache, the static and compact references beside them):
    .venv/bin/python -m benchmarks.recipe_sweep --cache benchmarks/work/cache-new --version 2 --max-rows 100000 \
        --only static-ref compact-ref bilstm-h128-sp bilstm-h256-sp bilstm-h64-sp bilstm-h128x2-sp \
        bilstm-h128-sp-mean bilstm-h128-sp-mse bilstm-h128-nosp
Each variant trains one epoch (unless it says otherwise) and is scored on STS-B dev and STS-B train (labelled
pairs we may select on; never STS-B test) and on the training run's held-out validation rows (mean cosine and
kNN@10 agreement with the teacher); `dev_per_s` is the student's encode rate on STS-B dev's sentences in this
process (a cost to compare between rows of one run; benchmarks.student_quality measures the ratio to the teacher).
Every finished row is appended to benchmarks/work/sweep.jsonl at once and skipped on a rerun (by name, cache,
version and --max-rows), so a sweep can span sessions; --table writes the table of the rows of that cache,
version and --max-rows into RESULTS.md (its own section, replaced on a rerun).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import STS_TRAIN, machine, replace_section

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
    # #24: the paper's BiLSTM with the levers that made static students good, beside the two shipped recipes
    "static-ref": STATIC,
    "compact-ref": STATIC | {"arch": "cnn", "hidden": 256, "kernel_sizes": [3], "static_path": True},
}
BILSTM = STATIC | {"arch": "bilstm", "hidden": 128, "pooling": "max", "static_path": True}  # sp: the static path
VARIANTS |= {
    "bilstm-h128-sp": BILSTM,
    "bilstm-h256-sp": BILSTM | {"hidden": 256},
    "bilstm-h64-sp": BILSTM | {"hidden": 64},
    "bilstm-h128x2-sp": BILSTM | {"layers": 2},
    "bilstm-h128-sp-mean": BILSTM | {"pooling": "mean"},
    "bilstm-h128-sp-mse": BILSTM | {"loss": "mse"},
    "bilstm-h128-sp-cos+mse": BILSTM | {"loss": "cosine+mse"},
    "bilstm-h128-nosp": BILSTM | {"static_path": False, "token_weights": False},
    "bilstm-h128-sp-e3": BILSTM | {"epochs": 3},
}


def row_key(name: str, cache: str, version: int | None, max_rows: int | None) -> str:
    """What a row was measured on: the variant, and the cache, version and rows it trained on."""
    return f"{name}@{cache}" + (f"@v{version}" if version else "") + (f"@{max_rows}" if max_rows else "")


def done_rows() -> dict[str, dict]:
    """Rows already measured, by row_key."""
    if not ROWS.exists():
        return {}
    rows = map(json.loads, ROWS.read_text().splitlines())
    return {row_key(r["name"], r["cache"], r.get("version"), r.get("max_rows")): r for r in rows}


def run_variant(name: str, cache: str, version: int | None = None, max_rows: int | None = None) -> dict:
    """Train one variant into benchmarks/work/sweep/NAME[-ROWS] and score it; append its row."""
    from pipeline.sts import load_task, read_stsbenchmark, sts_spearman
    from student import Student
    from student.training.train import TrainConfig, train

    out = f"benchmarks/work/sweep/{name}" + (f"-{max_rows}" if max_rows else "")
    started = time.perf_counter()
    settings = {"max_rows": max_rows, "version": version} | VARIANTS[name]  # a variant's own max_rows wins
    metrics = train(TrainConfig(shards=cache, out=out, force=True, quiet=True, checkpoint_every=0, **settings))
    secs = time.perf_counter() - started
    model = Student.from_pretrained(out)

    def encode(texts):
        return model.encode(texts, batch_size=256)

    dev = load_task("sts-b-dev")
    begun = time.perf_counter()
    dev_score = sts_spearman(encode, dev)  # its one encode (each distinct sentence once) is the rate measured
    rate = round(len(set(dev.left) | set(dev.right)) / (time.perf_counter() - begun))
    row = {"name": name, "dev": round(dev_score, 2),
           "ststrain": round(sts_spearman(encode, read_stsbenchmark(STS_TRAIN, "STS-B train")), 2),
           **{k: round(v, 4) for k, v in metrics["final"].items()},
           "init": {k: round(v, 4) for k, v in metrics["initial"].items()}, "dev_per_s": rate,
           "secs": round(secs), "rows_seen": metrics.get("rows_seen"), "cache": cache, "version": version,
           "max_rows": max_rows, "cfg": VARIANTS[name], "machine": machine()}
    with ROWS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the given measured rows."""
    lines = ["| variant | rows | STS-B dev | STS-B train | val cosine | val kNN@10 | dev sentences/s | train s | "
             "settings |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row.get('max_rows') or 'all'} | {row['dev']:.2f} | {row['ststrain']:.2f} | "
                     f"{row['val_cosine']:.3f} | {row['knn@10']:.3f} | {row.get('dev_per_s') or ''} | {row['secs']} "
                     f"| `{json.dumps(row['cfg'])}` |")
    return "\n".join(lines)


def main() -> None:
    """Run the variants not yet measured (or those named), then optionally write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="benchmarks/work/cache100k")
    parser.add_argument("--max-rows", type=int, default=None, help="train on the cache's first N rows (ids)")
    parser.add_argument("--version", type=int, default=None, help="the cache version read (default: newest)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table", action="store_true", help="write the table of this cache's rows into RESULTS.md "
                        "(alone: train nothing; with --only: after those variants)")
    args = parser.parse_args()
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only if args.only is not None else ([] if args.table else VARIANTS):
        if name not in VARIANTS:
            parser.error(f"--only {name}: no such variant (choose from {', '.join(VARIANTS)})")
        if row_key(name, args.cache, args.version, args.max_rows) not in done_rows():
            run_variant(name, args.cache, args.version, args.max_rows)
    if args.table:
        rows = [r for r in done_rows().values()
                if (r["cache"], r.get("version"), r.get("max_rows")) == (args.cache, args.version, args.max_rows)]
        where = (f"`{args.cache}`" + (f" version {args.version}" if args.version else "")
                 + (f", its first {args.max_rows:,} rows" if args.max_rows else ""))
        replace_section(f"recipe-sweep:{row_key('', args.cache, args.version, args.max_rows)[1:]}", "\n".join([
            f"## Student recipe sweep: {where} ({time.strftime('%Y-%m-%d')})", "",
            f"Machine: {machine()}. `python -m benchmarks.recipe_sweep --cache {args.cache}"
            + (f" --version {args.version}" if args.version else "")
            + (f" --max-rows {args.max_rows}" if args.max_rows else "")
            + "` (teacher all-MiniLM-L6-v2, mean pooling), one epoch each unless the settings say otherwise, one "
            "at a time; scored on STS-B dev and STS-B train (never test) and the run's held-out validation rows "
            "(mean cosine, kNN@10 agreement with the teacher). dev sentences/s: the student encoding STS-B dev's "
            "sentences in the sweep's process (batch 256), comparable between rows of one sweep only.", "",
            table(rows)]))


if __name__ == "__main__":
    main()
