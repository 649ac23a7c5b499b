"""Object-storage benchmarks (issue #22): training from s3:// against a local cache, and streaming a large remote
cache through the bounded local shard cache.

Both start a real S3 server (moto's ThreadedMotoServer on 127.0.0.1, inside this process; stopped on exit, Ctrl-C
included), upload a cache to it and point the children at it with AWS_ENDPOINT_URL. Every finished measurement is
one JSON line of a results file (benchmarks/results/remote_cache-<subcommand>.jsonl, the machine in every line),
written at once; a rerun with the same settings skips the lines already there, so either may be stopped and rerun.

throughput: for each recipe and each pair, three whole `tc train-student` processes back to back, in rotating
    order: --shards LOCAL, --shards s3://..., --shards s3://... --download-rate 50MB; each --recipe R
    --max-steps ROWS//batch_size(R) --seed S --quiet and a fresh --out. The remote runs share one --cache-dir with
    --cache-limit = 3 shards' bytes; its shards/ folder is emptied before every remote run (each downloads its
    shards) while the mirror's validation rows file (rows-*.arrow) is kept: one untimed remote warm-up run makes it
    first. Per run: whole-process wall s and peak RSS (os.wait4), the loop's train seconds and rows seen (the
    --max-steps checkpoint's; metrics.json when the run finished its epochs), in-loop rows/s. Per recipe: medians
    and s3/local ratios (goal >= 0.9x). The server shares the machine's cores with the trainer (its ranged GETs
    each read the whole object in moto), so a remote store on another machine costs this one less.

scale: a synthetic cache of max(--rows) rows (the real shards of --cache over and over with new contiguous ids;
    text, vectors and n_tokens kept; --dtype float16 halves the vectors), built under
    benchmarks/work/remote-scale/ (kept and resumed shard by shard; --direct writes each shard straight into the
    bucket instead, one at a time on local disk, rebuilt on every run), uploaded, then streamed in a child process:
    open_cache(url, cache_dir=<fresh>, cache_limit=--limit-fraction x the cache's bytes) and the raw rows of
    StreamingCacheDataset's shard order, shuffle buffer and length buckets (no tokenising). Every --every rows
    (1M) one line: rows, rows/s over the last --every rows, RSS, peak RSS, bytes in the mirror's shards/ folder and
    the ShardCache's stats (peak_bytes, ...). Then `tc verify URL` on the whole remote cache, timed.

Disk (scale): the replica ~= rows x (dim x 4 + ~135) bytes (10M rows of a 384-d float32 cache ~ 16.7 GB;
    --dtype float16 ~ 9.0 GB), the S3 server holds a second copy (moto spills objects to temporary files, under
    --spill-dir, default $TMPDIR or /tmp), plus --limit-fraction of it in the mirror: ~35 GB for 10M float32 rows,
    ~19 GB with --dtype float16, ~10 GB with --dtype float16 --direct. The estimate is printed, and checked against
    free space, before anything is written.

Examples:
  .venv/bin/python -m benchmarks.remote_cache throughput --cache benchmarks/work/cache-300k \\
      --recipes static,compact --rows 60000 --pairs 2
  .venv/bin/python -m benchmarks.remote_cache scale --cache benchmarks/work/cache-300k \\
      --rows 1000000,2000000,5000000,10000000 --limit-fraction 0.08 [--dtype float16] [--direct]
  add --smoke to either: tiny caches (2 shards of 1,000 rows) and sizes, under a minute; results under
  benchmarks/work/remote-smoke/ (delete that folder to rerun a smoke from scratch)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import ROOT, machine

WORK = ROOT / "benchmarks" / "work"
RESULTS_DIR = ROOT / "benchmarks" / "results"
SMOKE = WORK / "remote-smoke"
BUCKET = "tc-bench"  # fixed, so that a rerun's mirror (named by the URL) and its validation rows file are reused
MODES = ("local", "s3", "s3@rate")
LIMIT_SHARDS = 3  # throughput: --cache-limit of the remote runs, in shards' bytes
MANIFEST = "manifest.json"


# ---- plumbing -----------------------------------------------------------------------------------------------------

def tc() -> str:
    """The tc command of this interpreter's environment."""
    return str(Path(sys.executable).parent / "tc")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(spill_dir: str | None = None) -> Iterator[str]:
    """A moto S3 server on a free port with bucket BUCKET, the AWS environment of this process (and so of its
    children) pointed at it; yields 'http://127.0.0.1:PORT'. Stopped on leaving, whatever the reason."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    if spill_dir:  # where moto's objects roll over to disk (tempfile.SpooledTemporaryFile)
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(spill_dir)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(key, None)
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                           "AWS_ENDPOINT_URL": endpoint})
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        print(f"S3 server (moto) at {endpoint}, bucket {BUCKET}", file=sys.stderr, flush=True)
        yield endpoint
    finally:
        server.stop()
        print("S3 server stopped", file=sys.stderr, flush=True)


def sigterm_exits() -> None:
    """SIGTERM unwinds like Ctrl-C (so the server is stopped and the current child is not left behind)."""
    def handler(signum, frame):
        raise SystemExit(f"terminated (signal {signum})")
    signal.signal(signal.SIGTERM, handler)


class Results:
    """One JSON-lines results file: lines already there (by key), new ones appended and flushed one at a time."""

    def __init__(self, path: Path, machine_text: str):
        self.path, self.machine = path, machine_text
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, key: str, row: dict) -> dict:
        row = {"key": key, **row, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": self.machine}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows[key] = row
        return row


def stop_child(proc: subprocess.Popen) -> None:
    """Kill a child we started (we are stopping) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_child(cmd: list[str], env: dict | None = None, check: bool = True):
    """Run one command to completion, its output to a temporary file; (wall s, rusage, exit code, output). The
    child is killed if we are stopped meanwhile; a failure ends the benchmark (the server stopped) when `check`."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=ROOT, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop_child(proc)
            raise
        wall = time.perf_counter() - start
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().strip()
    if check and rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{text[-2000:]}")
    return wall, usage, rc, text


def settings_key(**settings) -> str:
    """A stable string of the settings a result depends on (part of every line's key)."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in `folder` (0 when missing)."""
    total = 0
    try:
        for entry in os.scandir(folder):
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    except OSError:
        return 0
    return total


def upload(folder: Path, url: str) -> tuple[int, float]:
    """Put every file of a local cache folder into the store at `url` (dot files such as .tc-lock left out),
    manifest.json last; (bytes, seconds)."""
    from teacher_cache.storage import Store

    store = Store.open(url)
    start, total, files = time.perf_counter(), 0, []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST:
                files.append((rel, path))
    for rel, path in [*files, (MANIFEST, folder / MANIFEST)]:
        store.put(rel, path)
        total += path.stat().st_size
    return total, time.perf_counter() - start


def bytes_per_row(cache: Path) -> tuple[float, int, int]:
    """(shard bytes per row, dim, bytes per vector value) of a local cache."""
    data = json.loads((cache / MANIFEST).read_text())
    rows = sum(s["rows"] for s in data["shards"])
    size = sum(s.get("bytes") or (cache / s["file"]).stat().st_size for s in data["shards"])
    import numpy as np

    return size / rows, data["dim"] * len(data["pooling"]), np.dtype(data["dtype"]).itemsize


def check_space(need: int, folders: list[Path]) -> None:
    """Refuse to start when the estimated bytes do not fit the free space of the (first existing parent of the)
    folders' file system(s)."""
    seen: dict[int, int] = {}
    for folder in folders:
        probe = folder
        while not probe.exists():
            probe = probe.parent
        seen.setdefault(os.stat(probe).st_dev, shutil.disk_usage(probe).free)
    free = min(seen.values())
    if len(seen) == 1 and need > free:
        raise SystemExit(f"needs ~{need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free: free some, or use "
                         "--dtype float16 / --direct / fewer --rows")


# ---- caches -------------------------------------------------------------------------------------------------------

def build_cache(source: Path, rows: int, shard_rows: int | None, dtype: str | None, target: Path | None = None,
                store=None) -> Path | None:
    """A cache of `rows` rows from `source`'s shards over and over (each new shard the first `shard_rows` rows of
    the next source shard, default all of them), ids rewritten to 0..rows-1; text, vectors and n_tokens kept, vectors
    cast to `dtype`. Into the folder `target` (kept; an interrupted build resumes at the first missing shard; a
    finished one is reused), or straight into `store` (each shard written to a scratch file, put, deleted)."""
    import numpy as np

    from teacher_cache import open_cache
    from teacher_cache.manifest import ShardInfo
    from teacher_cache.shards import ShardRows, ShardWriter, vectors_of

    src = open_cache(source)
    manifest = copy.deepcopy(src.manifest)
    dtype = dtype or manifest.dtype
    shard_rows = shard_rows or max(s.rows for s in manifest.shards)
    recipe = {"source": str(source.resolve()), "source_fingerprint": manifest.content_fingerprint(), "rows": rows,
              "shard_rows": shard_rows, "dtype": dtype}
    folder = target if target is not None else Path(tempfile.mkdtemp(prefix="tc-replica-", dir=WORK))
    done: list[ShardInfo] = []
    if target is not None:
        if (target / MANIFEST).exists() and json.loads((target / MANIFEST).read_text()).get("extra", {}).get(
                "replica") == recipe:
            return target
        target.mkdir(parents=True, exist_ok=True)
        (target / MANIFEST).unlink(missing_ok=True)  # incomplete until the end
        log = target / ".build.jsonl"  # the shards written so far (a dot file: never uploaded)
        if log.exists():
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if lines and lines[0] == recipe:
                for info in map(lambda d: ShardInfo(**d), lines[1:]):
                    path = target / info.file
                    if path.is_file() and path.stat().st_size == info.bytes and \
                            info.id_start == sum(s.rows for s in done):
                        done.append(info)
                    else:
                        break
        log.write_text("".join(json.dumps(x) + "\n" for x in [recipe, *map(vars, done)]))
        for rel in manifest.files:  # hard links (a cache refuses symlinks that lead outside it), else copies
            copy_in(source / rel, target / rel)
    manifest.dtype, manifest.shard_size, manifest.shards = dtype, shard_rows, list(done)
    manifest.extra = {**manifest.extra, "replica": recipe,
                      "note": f"{source.name}'s shards repeated with new ids (benchmarks/remote_cache.py)"}
    writer = ShardWriter(folder, manifest.format, dtype)
    written, index, started = sum(s.rows for s in done), len(done), time.perf_counter()
    try:
        while written < rows:
            table = src.read_shard(index % len(src.manifest.shards))
            take = min(shard_rows, table.num_rows, rows - written)
            table = table.slice(0, take)
            shard = ShardRows(ids=np.arange(written, written + take, dtype=np.int64),
                              texts=table.column("text").to_pylist(),
                              vectors={c: vectors_of(table, c) for c in manifest.embedding_columns},
                              n_tokens=table.column("n_tokens").to_numpy())
            path, sha = writer.write(index, shard)
            info = ShardInfo(path.name, take, written, written + take - 1, sha, int(shard.n_tokens.sum()),
                             path.stat().st_size)
            if store is not None:
                store.put(info.file, path)
                path.unlink()
            else:
                with open(folder / ".build.jsonl", "a") as fh:
                    fh.write(json.dumps(vars(info)) + "\n")
            manifest.shards.append(info)
            written, index = written + take, index + 1
            if index % 10 == 0:
                print(f"  replica: {written:,}/{rows:,} rows, {index} shards, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
        manifest.complete = True
        manifest.save(folder)
        if store is not None:
            for rel in manifest.files:
                store.put(rel, source / rel)
            store.put(MANIFEST, folder / MANIFEST)
    finally:
        if target is None:
            shutil.rmtree(folder, ignore_errors=True)
    return target


def copy_in(src: Path, dst: Path) -> None:
    """`src` at `dst`: a hard link where the file system allows, else a copy (kept when already there)."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def smoke_cache() -> Path:
    """The smoke runs' source: 2 shards of the first 1,000 rows of benchmarks/work/cache-300k's first shards."""
    source = WORK / "cache-300k"
    if not (source / MANIFEST).exists():
        raise SystemExit(f"--smoke builds its tiny cache from {source}: not found")
    return build_cache(source, 2000, 1000, None, SMOKE / "cache-2k")


# ---- throughput ---------------------------------------------------------------------------------------------------

def recipe_batch_size(recipe: str) -> int:
    """The recipe's batch size (student/training/recipes.py)."""
    from student.training.recipes import apply_recipe

    return int(apply_recipe(recipe, {})["batch_size"])


def run_metrics(out: Path) -> tuple[float, int, int]:
    """(train seconds, rows seen, steps) of a finished `tc train-student`: its --max-steps checkpoint's (a run
    stopped by --max-steps writes no metrics.json), else metrics.json's."""
    if (out / "metrics.json").exists():
        m = json.loads((out / "metrics.json").read_text())
        return float(m["train_seconds"]), int(m["rows_seen"]), int(m["steps"])
    import torch

    state = torch.load(out / "checkpoint" / "checkpoint.pt", map_location="cpu", weights_only=True)
    return float(state["seconds"]), int(state["rows_seen"]), int(state["step"])


def throughput(args: argparse.Namespace) -> None:
    """The throughput subcommand."""
    from teacher_cache.reader import remote_mirror
    from teacher_cache.shard_cache import format_size, parse_size

    if args.smoke:
        cache, rows, pairs = smoke_cache(), args.rows or 1024, args.pairs or 1
        recipes = (args.recipes or "static").split(",")
        work, results_path = SMOKE / "throughput", SMOKE / "remote_cache-throughput.jsonl"
    else:
        cache, rows, pairs = Path(args.cache), args.rows or 60_000, args.pairs or 2
        recipes = (args.recipes or "static,compact").split(",")
        work, results_path = WORK / "remote-bench", RESULTS_DIR / "remote_cache-throughput.jsonl"
    if not (cache / MANIFEST).exists():
        raise SystemExit(f"{cache}: no {MANIFEST} (not a teacher cache)")
    data = json.loads((cache / MANIFEST).read_text())
    shard_bytes = max(s.get("bytes") or (cache / s["file"]).stat().st_size for s in data["shards"])
    limit = LIMIT_SHARDS * shard_bytes
    rate = parse_size(args.download_rate, "--download-rate")
    settings = settings_key(bench="throughput", cache=str(cache.resolve()), rows=rows, seed=args.seed,
                            rate=rate, limit=limit, fingerprint=data["shards"][-1]["sha256"][:16])
    results = Results(results_path, machine())
    steps = {r: max(1, rows // recipe_batch_size(r)) for r in recipes}
    plan = [(r, p, mode) for ri, r in enumerate(recipes) for p in range(pairs)
            for mode in (MODES[(p + ri) % 3:] + MODES[:(p + ri) % 3])]
    key = {(r, p, m): f"{settings}|{r}|{p}|{m}" for r, p, m in plan}
    todo = [x for x in plan if results.get(key[x]) is None]
    print(f"throughput: {cache} ({data['rows']:,} rows, {len(data['shards'])} shards of {format_size(shard_bytes)}), "
          f"recipes {', '.join(f'{r} ({steps[r]} steps)' for r in recipes)}, {pairs} pair(s); remote runs: "
          f"--cache-limit {format_size(limit)} ({LIMIT_SHARDS} shards), rate cap {format_size(rate)}/s; "
          f"{len(plan) - len(todo)} of {len(plan)} runs already in {results_path}", file=sys.stderr, flush=True)
    if todo:
        work.mkdir(parents=True, exist_ok=True)
        cache_dir = work / "cache-dir"
        url = f"s3://{BUCKET}/throughput/{cache.name}"
        mirror = remote_mirror(url, cache_dir)
        with s3_server(args.spill_dir):
            size, seconds = upload(cache, url)
            print(f"uploaded {format_size(size)} to {url} in {seconds:.1f} s", file=sys.stderr, flush=True)

            def command(recipe: str, mode: str, out: Path, max_steps: int) -> list[str]:
                cmd = [tc(), "train-student", "--recipe", recipe, "--max-steps", str(max_steps), "--out", str(out),
                       "--quiet", "--seed", str(args.seed)]
                if mode == "local":
                    return [*cmd, "--shards", str(cache)]
                cmd += ["--shards", url, "--cache-dir", str(cache_dir), "--cache-limit", str(limit)]
                return [*cmd, "--download-rate", str(rate)] if mode == "s3@rate" else cmd

            def fresh(out: Path) -> Path:
                shutil.rmtree(out, ignore_errors=True)
                return out

            # untimed warm-up: the first remote run reads every shard once for the validation rows and keeps them
            # in the mirror (rows-*.arrow); the timed remote runs then download only the shards they train on
            out = fresh(work / "out" / "warmup")
            shutil.rmtree(mirror / "shards", ignore_errors=True)
            wall, *_ = run_child(command(recipes[0], "s3", out, 1))
            kept = sorted(p.name for p in mirror.glob("rows-*.arrow"))
            print(f"warm-up (untimed): one remote run ({wall:.1f} s) made the mirror's validation rows file "
                  f"{', '.join(kept) or '(none!)'}; it is kept for every timed run, only {mirror / 'shards'} is "
                  "cleared before each remote run", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
            for recipe, pair, mode in todo:
                out = fresh(work / "out" / f"{recipe}-{pair}-{mode.replace('@', '-')}")
                if mode != "local":
                    shutil.rmtree(mirror / "shards", ignore_errors=True)
                before = resource.getrusage(resource.RUSAGE_SELF)  # this process hosts the S3 server: its CPU
                wall, usage, _, _ = run_child(command(recipe, mode, out, steps[recipe]))
                after = resource.getrusage(resource.RUSAGE_SELF)
                server_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                rss = usage.ru_maxrss / 1024
                train_s, seen, done = run_metrics(out)
                row = results.add(key[(recipe, pair, mode)], {
                    "bench": "throughput", "recipe": recipe, "pair": pair, "mode": mode,
                    "order": [m for r, p, m in plan if (r, p) == (recipe, pair)].index(mode), "steps": done,
                    "wall_s": round(wall, 2), "train_s": round(train_s, 2), "rows_seen": seen,
                    "rows_per_s": round(seen / max(train_s, 1e-9), 1), "peak_rss_mib": round(rss, 1),
                    "server_cpu_s": round(server_cpu, 2),
                    "cache_limit": limit if mode != "local" else None, "download_rate": rate if mode == "s3@rate"
                    else None, "settings": json.loads(settings)})
                print(f"  {recipe} pair {pair} {mode}: {row['rows_per_s']:,.0f} rows/s in the loop "
                      f"({seen:,} rows, {train_s:.1f} s), whole process {wall:.1f} s, {rss:.0f} MiB; the S3 "
                      f"server (this process) used {server_cpu:.1f} CPU s meanwhile",
                      file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    summarize_throughput(results, settings, recipes, pairs, key)


def summarize_throughput(results: Results, settings: str, recipes: list[str], pairs: int, key: dict) -> None:
    """Print (and write once per recipe and pair count) medians and ratios of the runs."""
    lines = ["| recipe | local rows/s | s3 rows/s | s3@cap rows/s | s3 / local | s3@cap / local | whole-process "
             "s3 / local | whole-process s3@cap / local | peak RSS MiB local / s3 / s3@cap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        runs = {m: [results.get(key[(recipe, p, m)]) for p in range(pairs)] for m in MODES}
        if any(r is None for rs in runs.values() for r in rs):
            continue
        med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("rows_per_s", "wall_s", "peak_rss_mib")}
               for m in MODES}
        summary = {"bench": "throughput-summary", "recipe": recipe, "pairs": pairs,
                   **{f"rows_per_s_{m}": med[m]["rows_per_s"] for m in MODES},
                   **{f"wall_s_{m}": med[m]["wall_s"] for m in MODES},
                   **{f"peak_rss_mib_{m}": med[m]["peak_rss_mib"] for m in MODES},
                   "ratio_s3": round(med["s3"]["rows_per_s"] / med["local"]["rows_per_s"], 3),
                   "ratio_s3_rate": round(med["s3@rate"]["rows_per_s"] / med["local"]["rows_per_s"], 3),
                   "wall_ratio_s3": round(med["local"]["wall_s"] / med["s3"]["wall_s"], 3),
                   "wall_ratio_s3_rate": round(med["local"]["wall_s"] / med["s3@rate"]["wall_s"], 3),
                   "goal": ">= 0.9 (in-loop rows/s, s3 / local)", "settings": json.loads(settings)}
        skey = f"{settings}|{recipe}|summary|{pairs}"
        if results.get(skey) is None:
            results.add(skey, summary)
        s = summary
        lines.append(f"| {recipe} | {s['rows_per_s_local']:,.0f} | {s['rows_per_s_s3']:,.0f} | "
                     f"{s['rows_per_s_s3@rate']:,.0f} | {s['ratio_s3']:.2f}x | {s['ratio_s3_rate']:.2f}x | "
                     f"{s['wall_ratio_s3']:.2f}x | {s['wall_ratio_s3_rate']:.2f}x | "
                     f"{s['peak_rss_mib_local']:.0f} / {s['peak_rss_mib_s3']:.0f} / {s['peak_rss_mib_s3@rate']:.0f} |")
    cfg = json.loads(settings)
    print(f"\nMachine: {results.machine}. Medians of {pairs} run(s) each; rows/s = rows seen / train seconds of the "
          f"training loop; whole-process ratio = local wall / remote wall (higher is better; 1.0 = as fast). "
          f"s3@cap: --download-rate {cfg['rate'] / 1e6:g}MB. Goal: s3 / local >= 0.9x.\n")
    print("\n".join(lines))
    print(f"\n(rows in {results.path})")


# ---- scale --------------------------------------------------------------------------------------------------------

def rss_mib() -> float:
    """This process's resident set now, MiB (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stream_worker(args: argparse.Namespace) -> None:
    """(child of `scale`) Stream a remote cache's raw training rows; one JSON line on stdout per --every rows."""
    import resource

    import numpy as np

    from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
    from student.training.data import StreamingCacheDataset
    from teacher_cache import open_cache

    start = time.perf_counter()
    cache = open_cache(args.url, cache_dir=args.cache_dir, cache_limit=args.limit)
    column = cache.vector_column(None)
    tokenizer = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"],
                                   cache.manifest.max_length)
    dataset = StreamingCacheDataset(cache, column, tokenizer, batch_size=args.batch_size,
                                    val_ids=np.zeros(0, dtype=np.int64), buffer_size=args.buffer_size,
                                    pool_batches=args.pool_batches)
    rng = np.random.default_rng(0)
    batches = dataset._bucket(dataset._shuffle(dataset._rows(cache, dataset.stream_segments(0, 0, 1), rng), rng), rng)
    shards = cache.directory / "shards"
    at_start = {"rss_start_mib": round(rss_mib(), 1),  # before the first row: imports, tokenizer, manifest
                "peak_rss_start_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    rows, last_rows, last_t, next_at, total = 0, 0, time.perf_counter(), args.every, len(cache)
    max_disk = 0

    def emit() -> None:
        nonlocal last_rows, last_t
        now = time.perf_counter()
        disk = folder_bytes(shards)
        stats = cache.shard_cache.stats
        print(json.dumps({"rows": rows, "rows_per_s": round((rows - last_rows) / max(now - last_t, 1e-9), 1),
                          "seconds": round(now - start, 2), "rss_mib": round(rss_mib(), 1),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "disk_bytes": disk, "max_disk_bytes_seen": max(max_disk, disk), **at_start, **stats,
                          "wait_s": round(stats["wait_s"], 2)}), flush=True)
        last_rows, last_t = rows, now

    for batch in batches:
        rows += len(batch)
        if rows >= next_at or rows == total:
            max_disk = max(max_disk, folder_bytes(shards))
            emit()
            next_at = (rows // args.every + 1) * args.every
    cache.close()


def scale(args: argparse.Namespace) -> None:
    """The scale subcommand."""
    from teacher_cache.shard_cache import format_size
    from teacher_cache.storage import Store

    if args.smoke:
        source, every = smoke_cache(), args.every or 1000
        sizes = [int(r) for r in (args.rows or "2000,4000").split(",")]
        fraction = args.limit_fraction if args.limit_fraction is not None else 0.5
        work, results_path = SMOKE / "scale", SMOKE / "remote_cache-scale.jsonl"
        buffer_size, pool_batches = 300, 2  # the trainer's 10,000 and 50 would hold the whole tiny cache
    else:
        source = Path(args.cache)
        sizes = [int(r) for r in (args.rows or "1000000,2000000,5000000,10000000").split(",")]
        every = args.every or 1_000_000
        fraction = args.limit_fraction if args.limit_fraction is not None else 0.08
        work, results_path = WORK / "remote-scale", RESULTS_DIR / "remote_cache-scale.jsonl"
        buffer_size, pool_batches = 10_000, 50  # tc train-student's defaults
    if not (source / MANIFEST).exists():
        raise SystemExit(f"{source}: no {MANIFEST} (not a teacher cache)")
    src = json.loads((source / MANIFEST).read_text())
    rows, dtype = max(sizes), args.dtype or src["dtype"]
    per_row, width, itemsize = bytes_per_row(source)
    import numpy as np

    est_row = per_row - width * itemsize + width * np.dtype(dtype).itemsize
    est = int(rows * est_row)
    need = int(est * (1 + fraction) + (0 if args.direct else est) + 2 * per_row * max(s["rows"] for s in src["shards"]))
    target = None if args.direct else work / f"cache-{rows}-{dtype}"
    settings = settings_key(bench="scale", source=str(source.resolve()), rows=rows, dtype=dtype, fraction=fraction,
                            every=every, batch=args.batch_size, buffer=buffer_size, pool=pool_batches,
                            fingerprint=src["shards"][-1]["sha256"][:16])
    results = Results(results_path, machine())
    milestones = sorted({*range(every, rows + 1, every), rows})
    mkey = {m: f"{settings}|rows|{m}" for m in milestones}
    vkey = f"{settings}|verify"
    missing = [m for m in milestones if results.get(mkey[m]) is None]
    copies = ("one copy in the S3 server (--direct)" if args.direct
              else f"the replica under {work} and a copy in the S3 server")
    print(f"scale: {rows:,} rows of {source} ({dtype}), ~{format_size(est)} of shards; disk needed ~"
          f"{format_size(need)} ({copies} "
          f"+ the mirror's {fraction:g} share); {len(milestones) - len(missing)} of {len(milestones)} milestones "
          f"and {'the' if results.get(vkey) else 'no'} verify line already in {results_path}",
          file=sys.stderr, flush=True)
    if missing or results.get(vkey) is None:
        replica_done = target is not None and (target / MANIFEST).exists()
        check_space(need - (est if replica_done else 0), [work, Path(args.spill_dir or tempfile.gettempdir())])
        if target is not None:
            t0 = time.perf_counter()
            build_cache(source, rows, None, dtype, target)
            print(f"replica {target} ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        url = f"s3://{BUCKET}/scale/{rows}-{dtype}"
        with s3_server(args.spill_dir):
            t0 = time.perf_counter()
            if target is not None:
                _, seconds = upload(target, url)
            else:
                build_cache(source, rows, None, dtype, store=Store.open(url))
                seconds = time.perf_counter() - t0
            manifest = json.loads(Store.open(url).read_bytes(MANIFEST))
            total = sum(s["bytes"] for s in manifest["shards"])
            largest = max(s["bytes"] for s in manifest["shards"])
            limit = max(int(fraction * total), 2 * largest)
            print(f"{url}: {len(manifest['shards'])} shards, {format_size(total)}, in the store after "
                  f"{seconds:.0f} s; --cache-limit {format_size(limit)}"
                  f"{' (raised to 2 shards)' if limit > int(fraction * total) else ''}", file=sys.stderr, flush=True)
            if missing:
                mirror_root = work / "stream-cache-dir"
                shutil.rmtree(mirror_root, ignore_errors=True)  # a fresh mirror: every shard downloaded
                cmd = [sys.executable, "-m", "benchmarks.remote_cache", "_stream", "--url", url, "--cache-dir",
                       str(mirror_root), "--limit", str(limit), "--every", str(every), "--batch-size",
                       str(args.batch_size), "--buffer-size", str(buffer_size), "--pool-batches", str(pool_batches)]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                try:
                    for line in proc.stdout:
                        point = json.loads(line)
                        m = next((m for m in milestones if point["rows"] >= m and point["rows"] - m < every), None)
                        point = {"bench": "scale", "milestone": m, **point, "cache_limit": limit,
                                 "cache_bytes": total, "settings": json.loads(settings)}
                        if m is not None and results.get(mkey[m]) is None:
                            results.add(mkey[m], point)
                        print(f"  {point['rows']:>12,} rows  {point['rows_per_s']:>9,.0f} rows/s  RSS "
                              f"{point['rss_mib']:,.0f} MiB (peak {point['peak_rss_mib']:,.0f})  shards on disk "
                              f"{format_size(point['disk_bytes'])} (cache peak {format_size(point['peak_bytes'])}, "
                              f"limit {format_size(limit)})  waited {point['wait_s']:.1f} s",
                              file=sys.stderr, flush=True)
                except BaseException:
                    stop_child(proc)
                    raise
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                shutil.rmtree(mirror_root, ignore_errors=True)
                if proc.returncode != 0:
                    raise SystemExit(f"the stream worker failed ({proc.returncode}): {' '.join(cmd)}")
                print(f"streamed in {time.perf_counter() - t0:.0f} s (child peak RSS {usage.ru_maxrss / 1024:.0f} MiB)",
                      file=sys.stderr, flush=True)
            if results.get(vkey) is None:
                home = work / "verify-cache-dir"  # tc verify's mirror ($TC_CACHE_DIR): one shard at a time
                shutil.rmtree(home, ignore_errors=True)
                wall, usage, rc, text = run_child([tc(), "verify", url], env={"TC_CACHE_DIR": str(home)},
                                                  check=False)
                shutil.rmtree(home, ignore_errors=True)
                results.add(vkey, {"bench": "scale-verify", "rows": rows, "shards": len(manifest["shards"]),
                                   "cache_bytes": total, "wall_s": round(wall, 2), "rc": rc,
                                   "mb_per_s": round(total / 1e6 / max(wall, 1e-9), 1),
                                   "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "output_tail": text[-500:],
                                   "settings": json.loads(settings)})
                print(f"tc verify {url}: rc {rc}, {wall:.1f} s ({total / 1e6 / max(wall, 1e-9):,.0f} MB/s)",
                      file=sys.stderr, flush=True)
                if rc != 0:
                    print(text[-2000:], file=sys.stderr)
    summarize_scale(results, settings, sizes, milestones, mkey, vkey)


def summarize_scale(results: Results, settings: str, sizes: list[int], milestones: list[int], mkey: dict,
                    vkey: str) -> None:
    """Print the milestones at the --rows sizes (all of them are in the results file) and the verify time."""
    from teacher_cache.shard_cache import format_size

    cfg = json.loads(settings)
    print(f"\nMachine: {results.machine}. One pass over a {cfg['rows']:,}-row remote cache ({cfg['dtype']}), raw rows "
          f"(shard order, shuffle buffer, length buckets; no tokenising), --cache-limit = {cfg['fraction']:g} of the "
          "cache's bytes (at least 2 shards); rows/s over the last milestone's rows.\n")
    print("| rows | rows/s | RSS MiB | peak RSS MiB | shards on local disk | ShardCache peak_bytes | limit | "
          "downloads | waited s |\n|---|---|---|---|---|---|---|---|---|")
    for m in milestones:
        p = results.get(mkey[m])
        if p is None or (m not in sizes and m != milestones[-1]):
            continue
        print(f"| {p['rows']:,} | {p['rows_per_s']:,.0f} | {p['rss_mib']:,.0f} | {p['peak_rss_mib']:,.0f} | "
              f"{format_size(p['disk_bytes'])} | {format_size(p['peak_bytes'])} | {format_size(p['cache_limit'])} | "
              f"{p['downloads']} | {p['wait_s']:.1f} |")
    v = results.get(vkey)
    if v:
        print(f"\n`tc verify` of the whole remote cache ({v['shards']} shards, {format_size(v['cache_bytes'])}): "
              f"{v['wall_s']:.1f} s ({v['mb_per_s']:,.0f} MB/s), rc {v['rc']}, peak RSS {v['peak_rss_mib']:.0f} MiB")
    print(f"\n(rows in {results.path})")


# ---- command line -------------------------------------------------------------------------------------------------

def stream_main(argv: list[str]) -> None:
    """`python -m benchmarks.remote_cache _stream ...`: the child process of `scale` (not for direct use)."""
    p = argparse.ArgumentParser(prog="remote_cache _stream")
    p.add_argument("--url", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--every", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--buffer-size", type=int, default=10_000)
    p.add_argument("--pool-batches", type=int, default=50)
    stream_worker(p.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run a subcommand."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_stream"]:
        stream_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "), epilog=__doc__.split(
        "\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{throughput,scale}")

    p = sub.add_parser("throughput", help="tc train-student rows/s: local vs s3:// vs s3:// with --download-rate",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "example: .venv/bin/python -m benchmarks.remote_cache throughput --cache "
                           "benchmarks/work/cache-300k --recipes static,compact --rows 60000 --pairs 2\n"
                           "smoke:   .venv/bin/python -m benchmarks.remote_cache throughput --smoke"))
    p.add_argument("--cache", default=str(WORK / "cache-300k"), help="local cache folder (uploaded to the server)")
    p.add_argument("--recipes", default=None, help="comma-separated (default static,compact; --smoke: static)")
    p.add_argument("--rows", type=int, default=None, help="rows per run: --max-steps = rows // the recipe's batch "
                                                          "size (default 60000; --smoke 1024)")
    p.add_argument("--pairs", type=int, default=None, help="rounds of the three runs (default 2; --smoke 1)")
    p.add_argument("--download-rate", default="50MB", help="the capped remote runs' --download-rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spill-dir", default=None, help="where the S3 server spills objects (default $TMPDIR, /tmp)")
    p.add_argument("--smoke", action="store_true", help="2 shards of 1,000 rows, 1,024 rows, 1 pair, static only")

    p = sub.add_parser("scale", help="stream a 1M..10M-row remote cache: rows/s, RSS, local disk; tc verify time",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "example: .venv/bin/python -m benchmarks.remote_cache scale --cache "
                           "benchmarks/work/cache-300k --rows 1000000,2000000,5000000,10000000 --limit-fraction 0.08\n"
                           "smoke:   .venv/bin/python -m benchmarks.remote_cache scale --smoke\n\n"
                           "disk: ~rows x (dim x bytes per value + ~135 B) for the replica (10M x 384-d float32 ~ "
                           "16.7 GB, float16 ~ 9.0 GB),\nthe same again in the S3 server's temporary files "
                           "(--spill-dir), plus --limit-fraction of it in the mirror:\n~35 GB for 10M float32 rows, "
                           "~19 GB with --dtype float16, ~10 GB with --dtype float16 --direct (checked first)."))
    p.add_argument("--cache", default=str(WORK / "cache-300k"), help="local cache whose shards are replicated")
    p.add_argument("--rows", default=None, help="comma-separated sizes to report; the cache holds the largest "
                                                "(default 1000000,2000000,5000000,10000000; --smoke 2000,4000)")
    p.add_argument("--every", type=int, default=None, help="rows between result lines (default 1000000; "
                                                           "--smoke 1000)")
    p.add_argument("--limit-fraction", type=float, default=None, help="--cache-limit as a share of the cache's "
                                                                      "bytes (default 0.08; at least 2 shards)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16"), help="the replica's vectors (default: "
                                                                                   "the source's); float16 halves them")
    p.add_argument("--direct", action="store_true", help="no local replica: each shard written straight into the "
                                                         "bucket (half the disk; rebuilt on every run)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--spill-dir", default=None, help="where the S3 server spills objects (default $TMPDIR, /tmp)")
    p.add_argument("--smoke", action="store_true", help="2 shards of 1,000 rows replicated to 4,000 rows")

    args = parser.parse_args(argv)
    sigterm_exits()
    {"throughput": throughput, "scale": scale}[args.command](args)


if __name__ == "__main__":
    main()
