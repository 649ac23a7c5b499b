"""A data curve a user can read: one recipe trained on growing slices of one cache, scored at each size.

Usage: .venv/bin/python -m benchmarks.data_curve --cache CACHE --label LABEL [--recipes static ...]
           [--rows 100000,400000,1000000,2000000,all] [--version N] [--probe-cache PROBE] [--plot curve.png]
           [--table]

Example: .venv/bin/python -m benchmarks.data_curve --cache benchmarks/work/cache-new --label wikipedia+books \\
             --recipes static --probe-cache benchmarks/work/probe-mix --plot benchmarks/results/data_curve.png --table

Each size runs `tc train-student --shards CACHE --recipe R --max-rows N --out benchmarks/work/curve/R-N-LABEL`
("all": no --max-rows; a run cut short resumes from its checkpoint on a rerun), then scores the student on STS-B dev
and STS-B test (Spearman x100 of cosine; test is reported, never tuned on) and on kNN@10 agreement with the teacher
on a held-out probe cache (`tc probe`). Every finished row (recipe, rows, label, dev, test, knn@10, train_s,
rows_seen, machine) is appended at once to --results and skipped on a rerun, so a curve can span sessions. With
--version N the run reads that version of a living cache (`tc encode` updates) and a size counts its live rows:
--max-rows becomes the id below which N of them lie, so a version that removed rows (say, the books) is compared
with another at the same number of sentences. --plot draws dev, test and kNN@10 against rows (log x), one line per
(recipe, label); --table prints a markdown table of every row in --results.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, machine

RESULTS_FILE = ROOT / "benchmarks" / "results" / "data_curve.jsonl"
WORK = Path("benchmarks/work/curve")
DEFAULT_ROWS = "100000,400000,1000000,2000000,all"
TC = str(Path(sys.executable).with_name("tc"))


def done_rows(results: Path) -> list[dict]:
    """Rows already measured."""
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def key(row: dict) -> tuple:
    """What makes a row the same measurement: recipe, requested rows, source label and cache."""
    return row["recipe"], str(row["rows"]), row["label"], row["cache"]


def slug(label: str) -> str:
    """A folder-name form of a source label: its words joined by '-', at most 48 characters."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:48] or "run"


def id_cutoff(cache_path: str, version: int | None, live_rows: int) -> int:
    """The smallest id below which `live_rows` rows of the cache's `version` lie (its id count if it has fewer)."""
    import numpy as np

    from teacher_cache.reader import open_cache

    cache = open_cache(cache_path, version=version)
    deleted = np.asarray(cache.deleted_ids)
    lo, hi = min(live_rows, cache.id_rows), cache.id_rows
    while lo < hi:  # live rows below c: c - (deleted ids below c), non-decreasing in c
        mid = (lo + hi) // 2
        if mid - int(np.searchsorted(deleted, mid)) >= live_rows:
            hi = mid
        else:
            lo = mid + 1
    return lo


def run(cmd: list[str]) -> None:
    """Run one tc command; on failure, stop with its stderr."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def probe(probe_cache: str, student: Path, report: Path, max_rows: int) -> float:
    """kNN@10 agreement of `student` with the teacher on `probe_cache` (tc probe)."""
    run([TC, "probe", "--shards", probe_cache, "--student", str(student), "--report", str(report), "--k", "10",
         "--max-rows", str(max_rows), "--quiet"])
    return json.loads((report / "report.json").read_text())["knn@10_agreement"]


def measure(args: argparse.Namespace, recipe: str, rows: str) -> dict:
    """Train one recipe on the first `rows` rows of the cache, score it; return its row."""
    from pipeline.sts import load_task, sts_spearman
    from student import Student

    out = WORK / f"{recipe}-{rows}-{slug(args.label)}"
    resume = (out / "checkpoint").exists()  # a run cut short (a session's end, Ctrl-C) goes on where it stopped
    cmd = [TC, "train-student", "--shards", args.cache, "--recipe", recipe, "--out", str(out),
           "--resume" if resume else "--force", "--quiet", "--checkpoint-every", str(args.checkpoint_every)]
    if args.version:
        cmd += ["--version", str(args.version)]
    if rows != "all":
        cmd += ["--max-rows", str(id_cutoff(args.cache, args.version, int(rows)) if args.version else rows)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    cmd += [a for extra in args.train_arg for a in extra.split("=", 1)]  # e.g. --train-arg=--vocab-words=20000
    run(cmd)
    metrics = json.loads((out / "metrics.json").read_text())

    knn = probe(args.probe_cache, out, out.with_name(out.name + "-probe"), args.probe_rows)
    extra = {f"knn@10 {name}": round(probe(path, out, out.with_name(f"{out.name}-probe-{name}"), args.probe_rows), 4)
             for name, path in (spec.split("=", 1) for spec in args.extra_probe)}

    model = Student.from_pretrained(out)

    def encode(texts):
        return model.encode(texts, batch_size=256)

    return {"recipe": recipe, "rows": rows if rows == "all" else int(rows), "label": args.label,
            "rows_used": metrics["train_rows"] + metrics["val_rows"],
            "dev": round(sts_spearman(encode, load_task("sts-b-dev")), 2),
            "test": round(sts_spearman(encode, load_task("sts-b")), 2),
            "knn@10": round(knn, 4), **extra, "train_s": metrics["train_seconds"], "rows_seen": metrics["rows_seen"],
            "epochs": metrics["epochs"], "cache": args.cache, "probe_cache": args.probe_cache,
            "probe_rows": args.probe_rows, **({"version": args.version} if args.version else {}),
            "machine": machine()}


def table(rows: list[dict]) -> str:
    """Markdown table of every measured row, by recipe, label, then size (a column per --extra-probe seen)."""
    extras = sorted({k for row in rows for k in row if k.startswith("knn@10 ")})
    lines = ["| recipe | source | rows | STS-B dev | STS-B test | kNN@10 | " + "".join(f"kNN@10 {k[7:]} | "
                                                                            for k in extras) + "train s | rows seen |",
             "|---|---|---|---|---|---|" + "---|" * len(extras) + "---|---|"]
    for row in sorted(rows, key=lambda r: (r["recipe"], r["label"], r["rows_used"])):
        cells = "".join(f"{row[k]:.3f} | " if k in row else "| " for k in extras)
        lines.append(f"| {row['recipe']} | {row['label']} | {row['rows_used']:,} | {row['dev']:.2f} | "
                     f"{row['test']:.2f} | {row['knn@10']:.3f} | {cells}{row['train_s']:.0f} | {row['rows_seen']:,} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """STS-B dev, STS-B test and kNN@10 against rows (log x), one line per (recipe, label)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extras = sorted({k for row in rows for k in row if k.startswith("knn@10 ")})
    metrics = ["dev", "test", "knn@10", *extras]
    titles = ["STS-B dev (Spearman x100)", "STS-B test (Spearman x100)", "kNN@10 agreement with the teacher",
              *[f"kNN@10 agreement, held-out {k[7:]}" for k in extras]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5))
    series: dict[tuple, list[dict]] = {}
    for row in rows:
        series.setdefault((row["recipe"], row["label"]), []).append(row)
    for (recipe, label), points in sorted(series.items()):
        points.sort(key=lambda r: r["rows_used"])
        for ax, metric in zip(axes, metrics, strict=True):
            have = [p for p in points if metric in p]
            if have:
                ax.plot([p["rows_used"] for p in have], [p[metric] for p in have], marker="o",
                        label=f"{recipe} / {label}")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xscale="log", xlabel="cache rows trained on", title=title)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels collide
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.1 + 0.03 * ((len(labels) + 1) // 2), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    """Measure the sizes not yet in --results, then optionally plot and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="teacher cache to train on (from tc encode)")
    parser.add_argument("--label", default="", help="where the cache's sentences came from, e.g. wikipedia+books")
    parser.add_argument("--recipes", nargs="+", default=["static"], help="tc train-student --recipe values")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated sizes, 'all' = the whole cache "
                        f"(default {DEFAULT_ROWS})")
    parser.add_argument("--version", type=int, default=0,
                        help="read this version of the cache; sizes count its live rows (default: the newest)")
    parser.add_argument("--epochs", type=int, default=0, help="passed to tc train-student (default: the recipe's)")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="another tc train-student option, as --train-arg=--vocab-words=20000 (repeatable); "
                             "give the run its own --label")
    parser.add_argument("--probe-cache", default="benchmarks/work/probe-mix",
                        help="held-out teacher cache for kNN@10 (default benchmarks/work/probe-mix)")
    parser.add_argument("--checkpoint-every", type=int, default=2000,
                        help="tc train-student --checkpoint-every (default 2000 steps); a rerun resumes a run cut "
                             "short from its checkpoint")
    parser.add_argument("--extra-probe", action="append", default=[], metavar="NAME=CACHE",
                        help="another held-out cache, scored as 'knn@10 NAME' (repeatable), e.g. "
                             "wiki=benchmarks/work/probe-wiki")
    parser.add_argument("--probe-rows", type=int, default=20000, help="tc probe --max-rows (default 20000)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="jsonl of rows (default %(default)s)")
    parser.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    parser.add_argument("--table", action="store_true", help="print a markdown table of every row")
    args = parser.parse_args()

    if args.cache:
        if not args.label:
            parser.error("--label is required with --cache (the source of the cache's sentences)")
        for flag, path in [("--probe-cache", args.probe_cache)] + [("--extra-probe", e.partition("=")[2])
                                                                     for e in args.extra_probe]:
            if not (Path(path) / "manifest.json").exists():
                parser.error(f"{flag} {path}: no cache there (no manifest.json); pass a held-out cache folder "
                             "from tc encode")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        have = {key(row) for row in done_rows(args.results)}
        for recipe in args.recipes:
            for rows in [r.strip() for r in args.rows.split(",") if r.strip()]:
                if (recipe, rows, args.label, args.cache) in have:
                    print(f"{recipe} @ {rows}: already in {args.results}, skipped", file=sys.stderr)
                    continue
                row = measure(args, recipe, rows)
                with args.results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    elif not (args.plot or args.table):
        parser.error("nothing to do: give --cache (and --label) to measure, or --plot / --table")

    rows = done_rows(args.results)
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.table:
        print(table(rows))


if __name__ == "__main__":
    main()
