"""How well do training batches mix the sources of a cache? One epoch's batches, read as tc train-student reads them.

Usage: .venv/bin/python -m benchmarks.shard_mix --cache CACHE [--version N] --split-id ID [--interleave 1,4,8]
           [--batch-size 128] [--max-batches N]

Example: .venv/bin/python -m benchmarks.shard_mix --cache benchmarks/work/cache-new --version 2 --split-id 3459669

The rows below --split-id are one source, those at or above it another (an update appends its new texts as new
shards, so a cache grown by `tc encode` holds its new file in shards of their own). The streaming dataset of
`tc train-student` (shard order, shuffle buffer, length buckets; --interleave-shards N) is run without tokenising,
and each batch's share of the second source is counted. Perfect mixing gives every batch the source's share of
the epoch; one shard at a time gives batches of one source only. Rows are appended to
benchmarks/results/shard_mix.jsonl (one per setting) and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import ROOT, machine
from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.data import StreamingCacheDataset
from student.training.val_rows import validation_ids
from teacher_cache.reader import open_cache

RESULTS_FILE = ROOT / "benchmarks" / "results" / "shard_mix.jsonl"


def batch_shares(dataset: StreamingCacheDataset, split_id: int, max_batches: int | None) -> np.ndarray:
    """Share of rows with id >= split_id in each batch of epoch 0 (tokenising skipped: ids are all it needs)."""
    rng = np.random.default_rng([dataset.seed, 0, 0, 1])
    pick = np.random.default_rng([dataset.seed, 0, 0, 2])
    segments = dataset.stream_segments(0, 0, 1)
    shares = []
    for batch in dataset._bucket(dataset._shuffle(dataset._rows(dataset.cache, segments, rng, pick), rng), rng):
        ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
        shares.append(float(np.mean(ids >= split_id)))
        if max_batches and len(shares) >= max_batches:
            break
    return np.asarray(shares)


def main() -> None:
    """Count each setting's batch shares; append and print one row per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="teacher cache folder")
    parser.add_argument("--version", type=int, default=None, help="version to read (default the newest)")
    parser.add_argument("--split-id", type=int, required=True, help="first id of the second source")
    parser.add_argument("--interleave", default="1,4,8", help="--interleave-shards values (default 1,4,8)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=None, help="stop an epoch after N batches")
    args = parser.parse_args()
    cache = open_cache(args.cache, version=args.version)
    tokenizer = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"], 256)
    val_ids = validation_ids(cache.id_rows, min(2000, len(cache) // 10), exclude=cache.deleted_ids)
    rows = []
    for interleave in [int(x) for x in args.interleave.split(",")]:
        dataset = StreamingCacheDataset(cache, cache.vector_column(None), tokenizer, args.batch_size,
                                        val_ids=val_ids, interleave=interleave)
        start = time.perf_counter()
        shares = batch_shares(dataset, args.split_id, args.max_batches)
        overall = float(np.mean(shares))
        row = {"cache": args.cache, "version": args.version, "split_id": args.split_id, "interleave": interleave,
               "batch_size": args.batch_size, "batches": len(shares), "second_source_share": round(overall, 4),
               "batches_all_second": round(float(np.mean(shares == 1.0)), 4),
               "batches_none_second": round(float(np.mean(shares == 0.0)), 4),
               "share_std": round(float(np.std(shares)), 4),
               "binomial_std": round(float(np.sqrt(overall * (1 - overall) / args.batch_size)), 4),
               "seconds": round(time.perf_counter() - start, 1), "machine": machine()}
        rows.append(row)
        with RESULTS_FILE.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print("| --interleave-shards | batches | second source's share | batches all second source | batches none | "
          "share std across batches (perfect mixing) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['interleave']} | {r['batches']:,} | {r['second_source_share']:.3f} | "
              f"{r['batches_all_second']:.3f} | {r['batches_none_second']:.3f} | {r['share_std']:.3f} "
              f"({r['binomial_std']:.3f}) |")


if __name__ == "__main__":
    main()
