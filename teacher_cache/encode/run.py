"""`tc encode`: run the teacher over the corpus once, writing length-sorted, token-budgeted batches into shards.

The run is the one place both engines share: `start_encode` checks flags, corpus and --out (resume or refuse, see
cache_files) and loads the teacher; `EncodeRun.commit` writes each shard; `finish` completes the manifest. The
local engine's loop is `encode_local` below; the Ray driver's is in ray_encode. Batching and precision live in
batching.py, reading ahead in prefetch.py, the settings in encode_config.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, CacheMismatchError, CorpusError, reason
from teacher_cache.base.progress import Progress, log, warn
from teacher_cache.cache_writer import CacheWriter
from teacher_cache.encode.batching import BatchEncoder, resolve_precision
from teacher_cache.encode.changes import ChangePlan, checked_rows, plan_changes
from teacher_cache.encode.config import EncodeConfig
from teacher_cache.encode.corpus import CorpusStats, iter_corpus, resolve_corpus
from teacher_cache.encode.prefetch import chunked, prefetch
from teacher_cache.encode.side_teacher import add_side_teacher, is_side_run
from teacher_cache.encode.teacher import Teacher, load_teacher
from teacher_cache.encode.token_outputs import TOKEN_OUTPUTS_FILE, save_token_outputs
from teacher_cache.fingerprint import corpus_fingerprint, fingerprint_like, is_legacy_fingerprint
from teacher_cache.manifest import CacheManifest, VersionInfo, embedding_column
from teacher_cache.shards import ShardRows
from teacher_cache.versions import VersionView, cache_keys, text_keys, version_view, write_version_file

__all__ = ["EncodeConfig", "EncodeRun", "encode_corpus", "start_encode"]


def save_teacher_files(teacher: Teacher, out: Path) -> None:
    """Tokenizer files and the (float16) token-embedding matrix, so students need no teacher weights."""
    from safetensors.numpy import save_file

    target = out / "tokenizer"
    try:
        if not (out / "tokenizer" / "tokenizer.json").exists():
            teacher.save_tokenizer(out / "tokenizer")
        target = out / "token_embeddings.safetensors"
        if not target.exists():
            with atomic_path(target) as tmp:
                save_file({"token_embeddings": teacher.token_embedding_matrix().astype(np.float16)}, str(tmp))
    except Exception as exc:  # OSError, or safetensors' own error type for a full disk
        raise CacheError(f"{target}: cannot write ({reason(exc)}); complete shards are kept: fix this and "
                         "rerun to resume") from None


@dataclass
class EncodeRun:
    """A prepared encode: checked output folder, loaded teacher, manifest so far, and the shard chunks still to do.

    Both engines use it: the local loop in `encode_corpus`, and the Ray driver in `teacher_cache.encode.ray_engine`,
    so they write the very same shards (same row chunks, ids, columns) and manifest.
    """

    cfg: EncodeConfig
    files: list[Path]
    writer: CacheWriter  # holds the lock from start_encode until close(): one writer per folder
    teacher: Teacher
    poolings: list[str]
    normalize: bool
    max_length: int
    precision: str  # 'auto' until resolved on the first chunk
    manifest: CacheManifest
    stats: CorpusStats
    chunks: Iterator[list[str]] | None  # None when the cache was already complete
    done_rows: int = 0
    timing: dict = field(default_factory=lambda: {"encode_s": 0.0, "write_s": 0.0, "rows": 0})
    replacing: CacheManifest | bool = False  # --force over a cache: kept until the first new shard is ready
    started: bool = False  # True once this run has written into `out`
    plan: ChangePlan | None = None  # the texts to encode and the version they make (versions.py)
    previous: VersionView | None = None  # the newest finished version before this run
    removed: int = 0  # rows of `previous` the new version no longer holds
    total_rows: int | None = None  # rows the cache will have once this run is done (for progress)

    def begin_writing(self) -> None:
        """Start writing into `out`: replace the old cache (--force), write the teacher files and the manifest."""
        if self.started:
            return
        if self.replacing is not False:
            self.writer.wipe(self.replacing)
            self.replacing = False
        if not self.manifest.shards and "other_files" not in self.manifest.extra:
            self.manifest.extra["other_files"] = self.writer.user_files()  # the user's files, not the cache's
        save_teacher_files(self.teacher, self.out)
        self.writer.save(self.manifest)  # from here on, a killed run can be resumed
        self.started = True

    @property
    def out(self) -> Path:
        """The local folder the run writes into (the cache, or the staging folder of a remote one)."""
        return self.writer.out

    def close(self) -> None:
        """Release the folder lock (the run's files stay as they are)."""
        self.writer.release()

    def __enter__(self) -> EncodeRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def already_complete(self) -> bool:
        """True when the cache at `out` was complete before this run: nothing to encode."""
        return self.chunks is None

    def make_encoder(self, teacher: Teacher | None = None) -> BatchEncoder:
        """A BatchEncoder with this run's poolings, truncation and budgets (for `teacher`, default this run's)."""
        cfg = self.cfg
        return BatchEncoder(teacher or self.teacher, self.poolings, self.max_length, self.normalize,
                            "fp32" if self.precision == "auto" else self.precision, cfg.max_tokens, cfg.batch_size)

    def set_precision(self, precision: str) -> None:
        """Record the resolved precision in the manifest (saved) before the first shard is written."""
        self.precision = self.manifest.precision = precision
        if self.started:  # a --force run saves nothing before its first shard: the old cache stays whole until then
            self.writer.save(self.manifest)

    def commit(self, texts: list[str], vectors: dict[str, np.ndarray], n_tokens: np.ndarray,
               extra: dict[str, np.ndarray] | None = None) -> None:
        """Write the next shard (ids continue from the last one) atomically and add it to the saved manifest."""
        start = self.done_rows
        rows = ShardRows(ids=np.arange(start, start + len(texts), dtype=np.int64), texts=texts,
                         vectors={embedding_column(p, i): vectors[p] for i, p in enumerate(self.poolings)},
                         n_tokens=np.asarray(n_tokens, dtype=np.int32), extra=extra,
                         keys=text_keys(texts, len(texts)))
        self.begin_writing()
        started = time.perf_counter()
        self.writer.commit(self.manifest, rows)  # written, listed, manifest saved (uploaded, for a URL)
        self.timing["write_s"] += time.perf_counter() - started
        self.timing["rows"] += len(texts)
        self.done_rows += len(texts)

    def finish(self, **run_info) -> CacheManifest:
        """Mark the manifest complete (with corpus statistics and timings) and report what was skipped."""
        manifest, stats = self.manifest, self.stats
        manifest.precision = manifest.precision if manifest.precision != "auto" else "fp32"
        self.begin_writing()
        manifest.skipped_rows = stats.blank_lines + stats.missing_text + (
            stats.bad_utf8_count if self.cfg.bad_utf8 == "skip" else 0)
        manifest.extra["corpus_stats"] = {"blank_lines": stats.blank_lines, "bad_utf8_lines": stats.bad_utf8_count,
                                          "truncated_lines": stats.truncated_lines,
                                          "missing_text_rows": stats.missing_text, "ragged_rows": stats.ragged_count}
        manifest.extra["last_run"] = {**{k: round(v, 3) for k, v in self.timing.items()}, **run_info}
        save_token_outputs(self.teacher, self.out, manifest.teacher_hash)  # before "complete": a crash resumes
        if self.plan is not None:
            self.add_version()
        self.writer.finish(manifest)  # every file written since the manifest was begun recorded, the manifest last
        report_stats(self.cfg, stats, max_chars=self.max_length * 100)  # the cut iter_corpus was given
        return manifest

    def add_version(self) -> VersionInfo:
        """Record the version this run made: its file of deleted ids and duplicate counts, then its entry."""
        manifest, plan, previous = self.manifest, self.plan, self.previous
        id_rows = self.done_rows
        deleted, dup_ids, dup_counts = plan.version_arrays(id_rows)
        number = manifest.versions[-1].version + 1 if manifest.versions else 1
        file = write_version_file(self.out, number, deleted, dup_ids, dup_counts)
        added = id_rows - (previous.id_rows if previous is not None else 0)
        info = VersionInfo(version=number, shards=len(manifest.shards), rows=id_rows - len(deleted),
                           corpus_fingerprint=manifest.corpus_fingerprint, corpus_files=list(manifest.corpus_files),
                           created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), added=added,
                           removed=self.removed, seen=plan.corpus_rows, duplicates=plan.duplicates,
                           file=file)
        manifest.versions.append(info)
        if previous is not None or info.duplicates or len(deleted):
            log(f"{self.writer.where}: version {number}: {info.rows:,} rows ({added:,} encoded, {info.removed:,} "
                f"removed, {info.duplicates:,} duplicate lines stored once)")
        return info


def start_encode(cfg: EncodeConfig, device: str | None = None) -> EncodeRun:
    """Check flags, corpus and output, load the teacher (on `device`, default cfg.device) and prepare the manifest.

    When the output holds a cache made with the same settings, the run resumes after its last complete shard;
    when that cache is complete, the returned run has nothing to do (`already_complete`).
    """
    cfg.validate()
    files = resolve_corpus(cfg.corpus, cfg.text_column)
    writer = CacheWriter(cfg.out, "tc encode", cfg.format, cfg.dtype)
    writer.acquire()  # before anything in `out` is read: one writer at a time
    try:
        return _start_encode(cfg, files, writer, device)
    except BaseException:
        writer.release()
        raise


def _start_encode(cfg: EncodeConfig, files: list[Path], writer: CacheWriter, device: str | None) -> EncodeRun:
    out = writer.where  # for messages: the folder or URL the user named
    existing, replacing = writer.previous(cfg.force)
    teacher = load_teacher(cfg.teacher, device or cfg.device, cfg.online)
    teacher_hash = teacher.weights_hash()
    if is_side_run(cfg, existing, teacher_hash):  # a complete cache of another teacher: add this one beside it
        return add_side_teacher(cfg, files, writer, teacher, teacher_hash, existing)
    if cfg.max_length > teacher.max_position:
        warn(f"--max-length {cfg.max_length}: the teacher reads at most {teacher.max_position} word-pieces; using "
             f"{teacher.max_position}")
    poolings = cfg.pooling or [teacher.st_config.get("pooling", "mean")]
    normalize = cfg.normalize if cfg.normalize is not None else teacher.st_config.get("normalize", False)
    max_length = min(cfg.max_length, teacher.max_position)
    precision = cfg.precision
    if precision == "auto" and existing is not None:
        precision = existing.precision  # a resumed run keeps the precision the cache was started with
    fingerprint = corpus_fingerprint(files, cfg.text_column)
    manifest = CacheManifest(
        teacher=teacher.name if teacher.folder is None else str(teacher.folder.resolve()),
        teacher_hash=teacher_hash, pooling=poolings, max_length=max_length, dim=teacher.dim,
        dtype=cfg.dtype, normalize=bool(normalize), format=cfg.format, shard_size=cfg.shard_size,
        corpus_fingerprint=fingerprint, corpus_files=[str(f) for f in files],
        precision=precision, text_column=cfg.text_column,
        columns={embedding_column(p, i): p for i, p in enumerate(poolings)})
    manifest.extra["max_rows"] = cfg.max_rows
    run = EncodeRun(cfg=cfg, files=files, writer=writer, teacher=teacher, poolings=poolings, normalize=bool(normalize),
                    max_length=max_length, precision=precision, manifest=manifest, stats=CorpusStats(), chunks=None,
                    replacing=replacing)
    if existing is not None:
        if existing.complete and corpus_changed(existing, files, cfg, fingerprint):
            existing.versions = existing.all_versions()  # a format-1 cache: its one version, made explicit
            existing.complete = False
            log(f"{out}: the corpus changed since version {existing.versions[-1].version}; encoding only the "
                "texts the cache does not hold")
        if writer.resume(manifest, existing, ignore=("corpus_fingerprint",)):
            if save_token_outputs(teacher, writer.out, manifest.teacher_hash):
                log(f"{out}: added the teacher's per-token outputs ({TOKEN_OUTPUTS_FILE})")
                writer.save(existing)
            log(f"{out}: cache already complete ({existing.rows:,} rows, checksums match); nothing to do")
            run.manifest = existing
            return run
        if manifest.versions:
            run.previous = version_view(manifest, None, writer.out, str(out))
    corpus_rows = iter_corpus(files, cfg.text_column, cfg.bad_utf8, max_chars=max_length * 100, stats=run.stats)
    corpus_keys = text_keys(itertools.islice(corpus_rows, cfg.max_rows))  # every row's key: the first read
    if not len(corpus_keys) and not manifest.shards:
        raise CorpusError(f"--corpus {', '.join(map(str, files))}: no non-blank line to encode")
    if manifest.shards:
        log(f"{out}: reading the keys of {len(manifest.shards)} shards")
    run.plan = plan_changes(corpus_keys, cache_keys(manifest.shards, writer.read_columns))
    run.removed = run.plan.removed_from(run.previous)
    check_removals(run, cfg, files)
    run.done_rows = sum(s.rows for s in manifest.shards)
    run.total_rows = run.done_rows + run.plan.added
    again = iter_corpus(files, cfg.text_column, cfg.bad_utf8, max_chars=max_length * 100, stats=CorpusStats())
    texts = checked_rows(itertools.islice(again, cfg.max_rows), run.plan, corpus_keys, ", ".join(map(str, files)))
    run.chunks = chunked(texts, cfg.shard_size)
    if not run.replacing:
        run.begin_writing()  # a --force run begins at its first shard, so a failure before that keeps the old cache
    if run.previous is not None:
        log(f"{out}: updating version {run.previous.info.version}: {run.plan.added:,} texts to encode, "
            f"{len(run.plan.live_ids):,} rows of the cache kept ({len(manifest.shards)} shards so far)")
    elif run.done_rows:
        log(f"{out}: resuming after {len(manifest.shards)} complete shards ({run.done_rows:,} rows): "
            f"{run.plan.added:,} texts to encode")
    return run


def check_removals(run: EncodeRun, cfg: EncodeConfig, files: list[Path]) -> None:
    """Refuse, before anything is written, an update that drops most of the newest version: the usual cause is a
    corpus named by its new file alone (the corpus named is the whole of the new version)."""
    previous = run.previous
    if previous is None or cfg.allow_removals:
        return
    removed = run.removed
    if previous.info.rows and removed * 2 > previous.info.rows:
        raise CacheMismatchError(
            f"--corpus {', '.join(map(str, files[:3]))}{', ...' if len(files) > 3 else ''}: would drop {removed:,} "
            f"of the {previous.info.rows:,} rows of version {previous.info.version} (the corpus named is the whole "
            "of the new version: name every file, not only the new ones); pass --allow-removals if that is meant")


def corpus_changed(existing: CacheManifest, files: list[Path], cfg: EncodeConfig, fingerprint: str) -> bool:
    """Whether the corpus (its full `fingerprint`) or --max-rows differs from what the cache's newest version was
    made from."""
    recorded = existing.corpus_fingerprint
    if recorded and is_legacy_fingerprint(recorded):  # an older cache's cheap fingerprint: compared in its kind
        fingerprint = fingerprint_like(recorded, files, cfg.text_column)
    return fingerprint != recorded or existing.extra.get("max_rows") != cfg.max_rows


def encode_corpus(cfg: EncodeConfig) -> CacheManifest:
    """Encode the corpus into a complete cache at cfg.out, resuming after the last complete shard."""
    with start_encode(cfg) as run:  # holds the folder lock until the end, however it ends
        return run.manifest if run.already_complete else encode_local(run)


def encode_local(run: EncodeRun) -> CacheManifest:
    """The local engine's loop: read and tokenise ahead, encode each shard, commit it, then finish the cache."""
    cfg = run.cfg
    encoder = run.make_encoder()
    progress = Progress("encode", run.total_rows, quiet=cfg.quiet, start=run.done_rows)
    for texts, token_ids in prefetch(run.chunks, encoder.tokenize):
        if run.precision == "auto":
            run.set_precision(resolve_precision(encoder, token_ids))
        encoder.precision = run.precision
        started = time.perf_counter()
        vectors = encoder.encode_tokenized(token_ids, on_batch=lambda n, t: progress.update(n, tokens=t))
        run.timing["encode_s"] += time.perf_counter() - started
        run.commit(texts, vectors, np.fromiter((len(x) for x in token_ids), dtype=np.int32, count=len(token_ids)))
    progress.close()
    return run.finish()


def report_stats(cfg: EncodeConfig, stats: CorpusStats, max_chars: int | None = None) -> None:
    """Tell the user what the reader skipped or repaired (warnings: printed under --quiet too)."""
    if stats.blank_lines:
        warn(f"skipped {stats.blank_lines:,} blank lines")
    if stats.bad_utf8_count:
        action = "replaced bad bytes in" if cfg.bad_utf8 == "replace" else "skipped"
        shown = ", ".join(stats.bad_utf8_lines[:5]) + (" ..." if stats.bad_utf8_count > 5 else "")
        warn(f"{action} {stats.bad_utf8_count:,} lines with invalid UTF-8 ({shown})")
    if stats.truncated_lines:
        warn(f"truncated {stats.truncated_lines:,} over-long lines to {max_chars or cfg.max_length * 100:,} chars")
    if stats.missing_text:
        warn(f"skipped {stats.missing_text:,} rows with no {cfg.text_column!r} value (key missing or null); they "
             "are not counted as blank")
    if stats.ragged_count:
        shown = ", ".join(stats.ragged_rows[:5]) + (" ..." if stats.ragged_count > 5 else "")
        warn(f"{stats.ragged_count:,} CSV rows have another number of fields than the header (an unquoted "
             f"separator?); their {cfg.text_column!r} value may be cut or shifted: {shown}")
