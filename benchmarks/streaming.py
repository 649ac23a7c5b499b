"""Streaming vs in-memory training data: throughput ratio and peak RSS at 10k, 100k and 1M cached rows.

Usage: .venv/bin/python -m benchmarks.streaming --cache benchmarks/work/cache100k [--steps 60] [--arch bilstm]
Each measurement is its own process (peak RSS is that process's). The 1M cache is the 100k cache's real texts and
vectors written ten times over with new ids (so it has 1M rows on disk); the 10k cache is its first shard.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, append_results, machine, median, run_process

WORK = ROOT / "benchmarks" / "work"


def make_cache(source: Path, target: Path, rows: int) -> Path:
    """A cache of `rows` rows built from `source`'s shards (repeated with shifted ids when larger)."""
    from teacher_cache import open_cache
    from teacher_cache.manifest import ShardInfo
    from teacher_cache.shards import ShardRows, ShardWriter, vectors_of

    if (target / "manifest.json").exists():
        return target
    src = open_cache(source)
    target.mkdir(parents=True, exist_ok=True)
    for path in ("tokenizer", "token_embeddings.safetensors"):
        link = target / path
        if not link.exists():
            link.symlink_to((source / path).resolve())
    manifest = copy.deepcopy(src.manifest)
    manifest.shards, written, index = [], 0, 0
    writer = ShardWriter(target, manifest.format, manifest.dtype)
    while written < rows:
        for i in range(len(src.shard_paths)):
            if written >= rows:
                break
            table = src.read_shard(i)
            take = min(table.num_rows, rows - written)
            table = table.slice(0, take)
            vectors = {c: vectors_of(table, c) for c in manifest.embedding_columns}
            shard = ShardRows(ids=np.arange(written, written + take, dtype=np.int64),
                              texts=table.column("text").to_pylist(), vectors=vectors,
                              n_tokens=table.column("n_tokens").to_numpy())
            path, sha = writer.write(index, shard)
            manifest.shards.append(ShardInfo(path.name, take, written, written + take - 1, sha,
                                             int(shard.n_tokens.sum())))
            written += take
            index += 1
    manifest.complete = True
    manifest.save(target)
    return target


def worker(cache_dir: str, mode: str, steps: int, arch: str, batch_size: int) -> None:
    """Train `steps` batches from the stream or from arrays held in memory; print rows/s as JSON."""
    from student import Student, StudentConfig
    from student.training.data import StreamingCacheDataset
    from student.training.train import TrainConfig, make_optimizers, train_step
    from student.training.val_rows import read_rows
    from teacher_cache import open_cache

    torch.manual_seed(0)
    cache = open_cache(cache_dir)
    column = cache.manifest.embedding_columns[0]
    student = Student.from_tokenizer_dir(StudentConfig(arch=arch, out_dim=cache.dim), cache.tokenizer_path)
    student.set_sparse(True)
    cfg = TrainConfig(arch=arch, batch_size=batch_size)
    optimizers = make_optimizers(student, cfg, sparse=True)
    dataset = StreamingCacheDataset(cache_dir, column, student.tokenizer, batch_size, seed=0)
    load_s = 0.0
    if mode == "stream":
        batches = iter(dataset)
    else:  # the peer's way: every row's text and vector in RAM first, then the same bucketing
        start = time.perf_counter()
        texts, vectors = read_rows(cache, np.arange(len(cache)), column)
        load_s = time.perf_counter() - start
        rng = np.random.default_rng(0)

        def memory_batches():
            order = rng.permutation(len(texts))
            pool = 50 * batch_size
            for p in range(0, len(order), pool):
                chunk = sorted(order[p:p + pool], key=lambda r: len(texts[r]))
                cut = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
                for b in rng.permutation(len(cut)):
                    yield dataset.collate([(int(r), texts[r], vectors[r], 0) for r in cut[b]])

        batches = memory_batches()
    student.training.train()
    rows, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        train_step(student, batch, optimizers, None, cfg, None)
        rows += len(batch)
    print(json.dumps({"rows_per_s": rows / (time.perf_counter() - start), "load_s": load_s}))


def main() -> None:
    """Build the caches, run every (size, mode) in its own process, append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(WORK / "cache100k"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--arch", default="bilstm")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("CACHE", "MODE"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.steps, args.arch, args.batch_size)
        return
    sizes = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
    caches = {name: make_cache(Path(args.cache), WORK / f"stream-cache-{name}", rows) for name, rows in sizes.items()}
    results: dict = {}
    for _ in range(args.runs):
        for name, cache in caches.items():
            for mode in ("stream", "memory"):
                out = WORK / "stream-worker.json"
                cmd = ["sh", "-c", f"exec {sys.executable} -m benchmarks.streaming --worker {cache} {mode} "
                       f"--steps {args.steps} --arch {args.arch} --batch-size {args.batch_size} > {out}"]
                _, rss = run_process(cmd)
                res = json.loads(out.read_text())
                results.setdefault((name, mode), []).append((res["rows_per_s"], rss, res["load_s"]))
                print(name, mode, res, f"{rss:.0f} MiB", file=sys.stderr, flush=True)
    lines = ["| cache rows | streaming rows/s | in-memory rows/s | ratio | streaming peak RSS MiB | "
             "in-memory peak RSS MiB | in-memory load s |", "|---|---|---|---|---|---|---|"]
    base_rss = None
    for name in sizes:
        s, m = results[(name, "stream")], results[(name, "memory")]
        s_rate, m_rate = median([r[0] for r in s]), median([r[0] for r in m])
        s_rss, m_rss = median([r[1] for r in s]), median([r[1] for r in m])
        base_rss = base_rss or s_rss
        lines.append(f"| {sizes[name]:,} | {s_rate:.0f} | {m_rate:.0f} | {s_rate / m_rate:.2f} | {s_rss:.0f} | "
                     f"{m_rss:.0f} | {median([r[2] for r in m]):.1f} |")
    growth = 100 * (median([r[1] for r in results[("1M", "stream")]]) / base_rss - 1)
    section = "\n".join([
        f"## Student training: streaming vs in-memory ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}. {args.arch} student, batch {args.batch_size}, {args.steps} training steps per "
        f"process, {args.runs} runs each (medians), each in its own process. 10k = first shard of a 100k cache of "
        "real Wikipedia sentences (all-MiniLM-L6-v2 mean vectors); 1M = those 100k rows written 10 times over "
        "with new ids. In-memory = every text and vector read into RAM first (the tokenlearn way), then the same "
        "length bucketing.", "", *lines, "",
        f"Streaming peak RSS growth from 10k to 1M rows: {growth:+.1f}%."])
    append_results(section)
    print(section)


if __name__ == "__main__":
    main()
