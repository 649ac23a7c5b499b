"""`tc encode`, `tc verify`, `tc info`, `tc vocab`, `tc compact`: write a teacher cache, check it, describe it, add
whole words to it, rewrite its newest version into fresh shards."""

from __future__ import annotations

from typing import Annotated

import typer

from finetune.config import LogitsConfig
from pipeline.options import build, options_from
from teacher_cache.base.errors import UserError
from teacher_cache.base.progress import log
from teacher_cache.encode.config import EncodeConfig, RayOptions
from teacher_cache.encode.word_vocab import VocabConfig
from teacher_cache.fingerprint import corpus_still_matches
from teacher_cache.reader import open_cache


@options_from(EncodeConfig, RayOptions)
def encode(
    engine: Annotated[str, typer.Option(help="local (this process) or ray (a pool of Ray actors, one teacher "
                                             "each; same cache; needs pip install -e \".[ray]\").")] = "local",
    logits: Annotated[bool, typer.Option(help="Cache a task teacher's logits instead of sentence vectors: "
                                              "--teacher is a folder from `tc finetune`, --corpus (optional) a "
                                              "file in its task's layout; default its task's training rows. "
                                              "The same as `tc cache-logits`.")] = False,
    data_dir: Annotated[str | None, typer.Option(help="--logits: the GLUE folder of the teacher's task (default "
                                                      "$TC_GLUE_DIR).", show_default=False)] = None,
    **settings,
) -> None:
    """Run the teacher over a corpus once and write its sentence vectors as a sharded cache.

    A rerun resumes a killed run; on a changed corpus it encodes only the texts the cache does not hold (each
    text once) and records a new version (`tc info` lists them; --version N in train-student, probe, verify).
    Another --teacher on a complete cache is added beside its teacher (teachers/<name>/; train-student
    --teacher-column or --targets). Other settings are refused without --force.

    With --engine ray the shards are encoded by Ray actors and written by this process, in order: the same
    shards, ids and manifest as the local engine.

    With --logits it caches a fine-tuned task teacher's logits (for `tc finetune --kd-cache`).

    Example: tc encode --corpus wiki.txt.gz --out out/ --pooling mean,cls --shard-size 50000

    Example: tc encode --corpus 'wiki/*.txt.gz' --out out/ --pooling mean  (rerun next month with a new file in
    wiki/: only the texts out/ lacks are encoded; the corpus named is the whole of the new version)

    Example: tc encode --teacher sentence-transformers/all-mpnet-base-v2 --out out/ --pooling mean

    Example: tc encode --teacher ft_teacher/ --logits --data-dir glue/ --out logits_cache/
    """
    from teacher_cache.encode.run import encode_corpus

    if logits:
        encode_logits(settings, data_dir)
        return
    if data_dir is not None:
        raise UserError(f"--data-dir {data_dir}: only with --logits (a task teacher's rows)")
    cfg = build(EncodeConfig, settings)
    ray = RayOptions(settings["address"], settings["workers"], settings["gpus_per_worker"] or 0.0)
    if engine == "ray":
        from teacher_cache.encode.ray_engine import encode_corpus_ray

        manifest = encode_corpus_ray(cfg, ray)
    elif engine == "local":
        given = [flag for flag, value in (("--ray-address", ray.address), ("--workers", ray.workers),
                                          ("--gpus-per-worker", ray.gpus_per_worker or None)) if value is not None]
        if given:
            raise UserError(f"{given[0]}: only with --engine ray")
        manifest = encode_corpus(cfg)
    else:
        raise UserError(f"--engine {engine}: choose local or ray")
    rows = manifest.versions[-1].rows if manifest.versions else manifest.rows
    log(f"{cfg.out}: {rows:,} rows x {manifest.dim} ({', '.join(manifest.pooling)}) "
        f"in {len(manifest.shards)} shard(s), precision {manifest.precision}")  # --quiet: not shown


def encode_logits(settings: dict, data_dir: str | None = None) -> None:
    """`tc encode --logits`: `tc cache-logits` under encode's flag names (--teacher, --corpus: one file, --data-dir)."""
    from finetune.teachers import cache_logits

    teacher, corpus = settings["teacher"], settings["corpus"]
    if not teacher:
        raise UserError("--logits: pass --teacher, a task teacher folder written by tc finetune")
    if corpus and len(corpus) > 1:
        raise UserError(f"--corpus: --logits reads one file in the task's layout, got {len(corpus)}")
    cfg = LogitsConfig(model=teacher, out=str(settings["out"]), max_rows=settings["max_rows"],
                       batch_size=settings["batch_size"] or 64, shard_size=settings["shard_size"],
                       device=settings["device"], force=settings["force"], quiet=settings["quiet"],
                       rows_file=corpus[0] if corpus else None, data_dir=data_dir)
    manifest = cache_logits(cfg)
    log(f"{cfg.out}: {manifest.rows:,} rows x {manifest.dim} logits ({manifest.extra.get('task')})")


VERSION_HELP = "Cache version (default the newest finished one; `tc info` lists them)."


def verify(directory: Annotated[str, typer.Argument(help="Cache folder or store URL (s3://bucket/prefix).")],
           version: Annotated[int | None, typer.Option(help=VERSION_HELP, show_default=False)] = None) -> None:
    """Re-check every file against the manifest, and the corpus (when still there) against its fingerprint.

    Shards: checksums, row counts, contiguous ids, vector widths against the manifest's dim; the other files:
    checksums. Exits 1 and names the bad shard when one fails, or the corpus when it changed since the encode.

    A cache in a store is read object by object (one shard on local disk at a time).

    Example: tc verify out/    (or: tc verify s3://bucket/caches/wiki)
    """
    cache = open_cache(directory, allow_partial=True, version=version)
    problems = cache.verify()
    corpus = None, ""
    if cache.manifest.kind == "embeddings":  # a logits cache fingerprints its task rows, not corpus files
        corpus = corpus_still_matches(cache.manifest.corpus_files, cache.manifest.text_column,
                                      cache.manifest.corpus_fingerprint)
        if corpus[0] is False:
            problems.append(corpus[1])
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    state = "complete" if cache.manifest.complete else "INCOMPLETE (rerun tc encode to finish)"
    files = len(cache.manifest.files)
    sides = cache.manifest.teachers
    side = (f"; {len(sides)} side teacher(s), {sum(len(t.shards) for t in sides.values())} side shards and "
            f"{sum(len(t.files) for t in sides.values())} file(s)" if sides else "")
    typer.echo(f"ok: {len(cache.manifest.shards)} shards, {len(cache):,} rows and {files} other file(s){side}, "
               f"checksums match; {state}")
    if corpus[1]:
        typer.echo(corpus[1] if corpus[0] else f"note: {corpus[1]}", err=not corpus[0])
    if not files and cache.manifest.kind != "logits":
        typer.echo("note: this cache was written before other files were checksummed; its shards alone were "
                   "checked", err=True)


def info(directory: Annotated[str, typer.Argument(help="Cache folder or store URL (s3://bucket/prefix).")],
         version: Annotated[int | None, typer.Option(help=VERSION_HELP, show_default=False)] = None) -> None:
    """Print what a cache holds: rows, dim, teacher, poolings, size on disk, token-length statistics.

    Example: tc info out/    (or: tc info s3://bucket/caches/wiki)
    """
    # a cache being written shows its progress
    cache = open_cache(directory, allow_partial=True, allow_writer=True, version=version)
    m = cache.manifest
    if cache.remote:  # from the manifest: no shard is fetched to describe a remote cache
        total = sum(s.n_tokens for s in cache.shards)  # the manifest counts a shard's deleted rows too
        deleted = ", deleted rows included" if len(cache.deleted_ids) else ""
        tokens = f"mean {total / max(cache.id_rows, 1):.1f}, total {total:,} (from the manifest{deleted})"
    else:
        stats = cache.token_stats()
        tokens = (f"mean {stats['mean']:.1f}, median {stats['median']:.0f}, p95 {stats['p95']:.0f}, "
                  f"max {stats['max']}, total {stats['total']:,}")
    lines = [
        ("cache", f"{directory} ({'complete' if m.complete else 'incomplete'}, {m.format}, {m.dtype})"),
        ("rows", f"{len(cache):,} in {len(cache.shards)} shard(s) of up to {m.shard_size:,}"),
        ("versions", version_line(cache)),
        ("dim", str(m.dim)),
        ("teacher", f"{m.teacher} (weights {m.teacher_hash[:12]})"),
        ("pooling", ", ".join(f"{c}={p}" for c, p in m.columns.items()) + f"; normalized={m.normalize}"),
        ("max_length", str(m.max_length)),
        ("precision", m.precision),
        ("corpus", f"{', '.join(m.corpus_files)} (fingerprint {m.corpus_fingerprint[:12]})"),
        ("teachers", "; ".join(teacher_lines(cache))),
        ("tokens/row", tokens),
        ("size", f"{cache.size_on_disk() / 2**20:,.1f} MiB" + (" in the store" if cache.remote else "")),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        typer.echo(f"{key:<{width}}  {value}")


def version_line(cache) -> str:
    """The versions of the cache, newest last, and which one is shown."""
    versions = cache.manifest.all_versions()
    if not versions:
        return "none finished yet"
    shown = [f"{v.version} ({v.created[:10]}, {v.rows:,} rows, +{v.added:,} -{v.removed:,}"
             + (f", {v.duplicates:,} duplicates" if v.duplicates else "") + ")" for v in versions[-5:]]
    more = f"{len(versions) - 5} older, " if len(versions) > 5 else ""
    reading = f"; showing {cache.version.version}" if cache.version is not None else ""
    return more + "; ".join(shown) + reading


def teacher_lines(cache) -> list[str]:
    """One entry per teacher of the cache, the main one first: name, dim, pooling, complete or what it covers."""
    from teacher_cache.side_teachers import covered

    m, names = cache.manifest, cache.teacher_names()
    lines = [f"{names[0]} (main, dim {m.dim}, {', '.join(m.pooling)})"]
    for name, entry in m.teachers.items():
        done = covered(entry, cache.shards)
        state = "complete" if done == len(cache.shards) and entry.complete else (
            f"covers {done} of {len(cache.shards)} shards: rerun `tc encode --teacher {entry.teacher} --out "
            f"{cache.location}`")
        lines.append(f"{name} (side, dim {entry.dim}, {', '.join(entry.pooling)}, {state})")
    return lines


@options_from(VocabConfig)
def vocab(**settings) -> None:
    """Add the corpus's frequent whole words to a cache, for static students (--vocab-words in tc train-student).

    Counts the words of the cache's texts as its tokenizer splits them (BERT uncased: lowercased, accents
    stripped, split on whitespace and punctuation), keeps the --words most frequent (seen --min-count times or
    more) that word-pieces cut into two or more pieces, runs each through the teacher alone ([CLS] pieces [SEP],
    mean-pooled) and writes vocab_words.txt and vocab_words.safetensors into the cache, checksummed in its
    manifest. Rerun with the same settings: nothing to do.

    Example: tc vocab --shards out/ --words 50000 --min-count 5
    """
    from teacher_cache.encode.word_vocab import build_vocab

    build_vocab(build(VocabConfig, settings))


def compact(
    directory: Annotated[str | None, typer.Argument(metavar="CACHE", help="Cache folder (a local one).",
                                                    show_default=False)] = None,
    shards: Annotated[str | None, typer.Option("--shards", help="The cache folder, as a flag (the same as CACHE).",
                                               show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Rewrite the newest version's live rows into fresh, full shards and drop the older versions.

    Ids are renumbered 0..n-1 (deleted rows dropped, id order kept), duplicate counts and side teachers carried
    over; the new shards are named shard-g<generation>-NNNNN. The manifest is saved once, after every new file, and
    the old shards are removed only then: killed at any moment, the cache stays readable and a rerun finishes.

    Example: tc compact out/
    """
    from teacher_cache.compact import compact_cache

    if (directory is None) == (shards is None):
        raise UserError("tc compact: name the cache once, as CACHE or --shards CACHE")
    result = compact_cache(directory or shards, quiet=quiet)
    if result.leftovers:
        log(f"removed {result.leftovers} file(s) an interrupted tc compact left")
    typer.echo(result.summary())
