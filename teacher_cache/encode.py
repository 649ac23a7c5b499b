"""`tc encode`: run the teacher over the corpus once, writing length-sorted, token-budgeted batches into shards."""

from __future__ import annotations

import errno
import gzip
import itertools
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from teacher_cache.cache_files import (  # noqa: F401  (wipe_cache, remove_strays: also used by logits and ray)
    OWN_FILES,
    has_cache,
    load_old,
    other_files,
    recheck,
    record_files,
    remove_strays,
    wipe_cache,
)
from teacher_cache.corpus import (
    DEFAULT_CORPUS,
    CorpusStats,
    corpus_fingerprint,
    is_table,
    iter_corpus,
    resolve_corpus,
)
from teacher_cache.errors import CacheError, CacheMismatchError, CorpusError
from teacher_cache.lock import FolderLock
from teacher_cache.manifest import MANIFEST_NAME, CacheManifest, ShardInfo, embedding_column
from teacher_cache.progress import Progress
from teacher_cache.shards import FORMATS, ShardRows, ShardWriter
from teacher_cache.teacher import (
    MIN_CALIBRATION_COSINE,
    POOLINGS,
    PRECISIONS,
    Teacher,
    cpu_has_fast_bf16,
    load_teacher,
    pool,
)
from teacher_cache.token_outputs import TOKEN_OUTPUTS_FILE, save_token_outputs

DTYPES = ("float32", "float16")
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EncodeConfig:
    """Every knob of `tc encode`; None means 'as the teacher declares' or 'pick for the device'."""

    corpus: list[str] = field(default_factory=lambda: [str(DEFAULT_CORPUS)])
    out: Path = Path("out")
    teacher: str | None = None
    pooling: list[str] | None = None
    max_length: int = 256
    batch_size: int | None = None
    max_tokens: int | None = None
    shard_size: int = 50_000
    format: str = "arrow"
    dtype: str = "float32"
    text_column: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    normalize: bool | None = None
    bad_utf8: str = "replace"
    max_rows: int | None = None
    force: bool = False
    quiet: bool = False
    online: bool = False


def validate(cfg: EncodeConfig) -> None:
    """Reject bad flag values with a one-line error naming the flag."""
    checks = [
        (cfg.max_length >= 2, f"--max-length {cfg.max_length}: must be at least 2"),
        (cfg.batch_size is None or cfg.batch_size > 0, f"--batch-size {cfg.batch_size}: must be positive"),
        (cfg.max_tokens is None or cfg.max_tokens >= cfg.max_length,
         f"--max-tokens {cfg.max_tokens}: must be at least --max-length ({cfg.max_length})"),
        (cfg.batch_size is None or cfg.max_tokens is None, "--batch-size and --max-tokens: give one, not both"),
        (cfg.shard_size > 0, f"--shard-size {cfg.shard_size}: must be positive"),
        (cfg.max_rows is None or cfg.max_rows > 0, f"--max-rows {cfg.max_rows}: must be positive"),
        (cfg.format in FORMATS, f"--format {cfg.format}: choose one of {', '.join(FORMATS)}"),
        (cfg.dtype in DTYPES, f"--dtype {cfg.dtype}: choose one of {', '.join(DTYPES)}"),
        (cfg.precision in PRECISIONS, f"--precision {cfg.precision}: choose one of {', '.join(PRECISIONS)}"),
    ]
    for name in cfg.pooling or []:
        checks.append((name in POOLINGS, f"--pooling {name}: choose from {', '.join(POOLINGS)}"))
    if cfg.pooling is not None:
        checks.append((len(set(cfg.pooling)) == len(cfg.pooling) and cfg.pooling,
                       f"--pooling {','.join(cfg.pooling)}: name each pooling once"))
    for ok, message in checks:
        if not ok:
            raise CacheError(message)


def default_max_tokens(device: torch.device) -> int:
    """Token budget per forward pass: large enough to keep matmuls efficient, small enough for memory."""
    return 65_536 if device.type == "cuda" else 4_096


class BatchEncoder:
    """Tokenises, length-sorts and batches texts by token budget, and pools the teacher's output."""

    def __init__(self, teacher: Teacher, poolings: list[str], max_length: int, normalize: bool,
                 precision: str, max_tokens: int | None, batch_size: int | None):
        """Prepare a reusable encoder; `precision` must already be resolved (not 'auto')."""
        from tokenizers import Tokenizer

        self.teacher, self.poolings, self.max_length = teacher, poolings, max_length
        self.normalize, self.precision = normalize, precision
        self.batch_size = batch_size
        self.max_tokens = max_tokens or default_max_tokens(teacher.device)
        # An independent Rust tokenizer: truncation only, padding done here per batch.
        self.tokenizer = Tokenizer.from_str(teacher.tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.pad_id = teacher.tokenizer.pad_token_id or 0
        self.use_token_types = "token_type_ids" in teacher.tokenizer.model_input_names

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids of each text, truncated to max_length, special tokens added."""
        return [enc.ids for enc in self.tokenizer.encode_batch(texts)]

    def batches(self, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Row indices of each batch: longest first, packed up to the token budget (or fixed row count)."""
        order = np.argsort(-lengths, kind="stable")
        if self.batch_size:
            for i in range(0, len(order), self.batch_size):
                yield order[i:i + self.batch_size]
            return
        i = 0
        while i < len(order):
            longest = int(lengths[order[i]])
            rows = max(1, min(self.max_tokens // max(longest, 1), 1024))
            yield order[i:i + rows]
            i += rows

    def forward(self, ids: list[list[int]], precision: str | None = None) -> dict[str, torch.Tensor]:
        """Pad one batch, run the teacher once, and return each pooling's vectors (float32, on CPU)."""
        precision = precision or self.precision
        lengths = [len(x) for x in ids]
        width = max(lengths)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = seq
        dev = self.teacher.device
        input_t = torch.from_numpy(input_ids)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        if dev.type == "cuda":
            input_t, mask = input_t.pin_memory().to(dev, non_blocking=True), mask.pin_memory().to(dev)
        inputs = {"input_ids": input_t, "attention_mask": mask}
        if self.use_token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_t)
        low = LOW_PRECISION.get(precision)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None):
            out = self.teacher.model(**inputs)
            pooled = pool(out.last_hidden_state, mask, self.poolings, getattr(out, "pooler_output", None),
                          self.normalize)
        return {k: v.float().cpu() for k, v in pooled.items()}

    def encode_tokenized(self, token_ids: list[list[int]], on_batch=None) -> dict[str, np.ndarray]:
        """Vectors for pre-tokenised rows, returned in input order."""
        lengths = np.fromiter((len(x) for x in token_ids), dtype=np.int64, count=len(token_ids))
        out = {p: np.empty((len(token_ids), self.teacher.dim), dtype=np.float32) for p in self.poolings}
        for rows in self.batches(lengths):
            pooled = self.forward([token_ids[r] for r in rows])
            for name, vec in pooled.items():
                out[name][rows] = vec.numpy()
            if on_batch:
                on_batch(len(rows), int(lengths[rows].sum()))
        return out

    def calibrate(self, token_ids: list[list[int]]) -> tuple[bool, float]:
        """Compare this precision against fp32 on a sample; True when every cosine stays above the bar."""
        if self.precision == "fp32" or not token_ids:
            return True, 1.0
        sample = sorted(token_ids[:256], key=len)[-64:]  # the longest rows accumulate most rounding
        ref, low = self.forward(sample, "fp32"), self.forward(sample)
        worst = min(float(torch.nn.functional.cosine_similarity(ref[p], low[p]).min()) for p in self.poolings)
        return worst >= MIN_CALIBRATION_COSINE, worst


def count_rows(files: list[Path]) -> int | None:
    """Line/row count for the ETA (blank lines included); None where it is not cheap to know or not readable."""
    try:
        return _count_rows(files)
    except Exception:  # a corrupt file: the reader itself reports it, in one line, with its name
        return None


def _count_rows(files: list[Path]) -> int:
    total = 0
    for path in files:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            total += sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b""))
        if is_table(path) and path.name.endswith((".csv", ".tsv", ".csv.gz")):
            total -= 1  # header
    return total


def prefetch(chunks: Iterator[list[str]], tokenize, depth: int = 1) -> Iterator[tuple[list[str], list]]:
    """Read and tokenise the next chunk in a background thread while the teacher runs on this one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for chunk in chunks:
                item = (chunk, tokenize(chunk))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # re-raised in the consumer, which owns the error reporting
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="tc-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def chunked(rows: Iterator[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of `size` rows (the last one shorter)."""
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def save_teacher_files(teacher: Teacher, out: Path) -> None:
    """Tokenizer files and the (float16) token-embedding matrix, so students need no teacher weights."""
    from safetensors.numpy import save_file

    target = out / "tokenizer"
    tmp = out / "token_embeddings.safetensors.tmp"
    try:
        if not (out / "tokenizer" / "tokenizer.json").exists():
            teacher.save_tokenizer(out / "tokenizer")
        target = out / "token_embeddings.safetensors"
        if not target.exists():
            save_file({"token_embeddings": teacher.token_embedding_matrix().astype(np.float16)}, str(tmp))
            tmp.replace(target)
    except Exception as exc:  # OSError, or safetensors' own error type for a full disk
        raise write_error(target, exc, tmp) from None


def write_error(target: Path, exc: Exception, tmp: Path | None = None) -> CacheError:
    """The one-line error for a file that could not be written (the partial file removed)."""
    if tmp is not None:
        tmp.unlink(missing_ok=True)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in first
    reason = "no space left on device" if full else (getattr(exc, "strerror", None) or first)[:200]
    return CacheError(f"{target}: cannot write ({reason}); complete shards are kept: fix this and rerun to resume")


def make_output_dir(out: Path) -> None:
    """Create the output folder (and parents), or raise a one-line error."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"--out {out}: cannot create folder ({exc.strerror})") from None


def prepare_output(out: Path) -> CacheManifest | None:
    """Create the output folder if needed and return the manifest already there, if any."""
    make_output_dir(out)
    if (out / MANIFEST_NAME).exists():
        return CacheManifest.load(out)
    if any(out.glob("shard-*")):
        raise CacheMismatchError(f"--out {out}: holds shard files but no manifest; use --force to overwrite")
    return None


def log(cfg: EncodeConfig, message: str) -> None:
    """One status line on stderr unless --quiet."""
    if not cfg.quiet:
        print(message, file=sys.stderr)


@dataclass
class EncodeRun:
    """A prepared encode: checked output folder, loaded teacher, manifest so far, and the shard chunks still to do.

    Both engines use it: the local loop in `encode_corpus`, and the Ray driver in `teacher_cache.ray_encode`,
    so they write the very same shards (same row chunks, ids, columns) and manifest.
    """

    cfg: EncodeConfig
    files: list[Path]
    out: Path
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
    lock: FolderLock | None = None  # held from start_encode until close(): one writer per folder
    replacing: CacheManifest | bool = False  # --force over a cache: kept until the first new shard is ready
    started: bool = False  # True once this run has written into `out`

    def begin_writing(self) -> None:
        """Start writing into `out`: replace the old cache (--force), write the teacher files and the manifest."""
        if self.started:
            return
        if self.replacing is not False:
            wipe_cache(self.out, self.replacing if isinstance(self.replacing, CacheManifest) else None)
            self.replacing = False
        if not self.manifest.shards and "other_files" not in self.manifest.extra:
            self.manifest.extra["other_files"] = other_files(self.out)  # the user's files, not the cache's
        save_teacher_files(self.teacher, self.out)
        record_files(self.out, self.manifest)
        self.manifest.save(self.out)  # from here on, a killed run can be resumed
        self.started = True

    def close(self) -> None:
        """Release the folder lock (the run's files stay as they are)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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
            self.manifest.save(self.out)

    def commit(self, texts: list[str], vectors: dict[str, np.ndarray], n_tokens: np.ndarray,
               extra: dict[str, np.ndarray] | None = None) -> None:
        """Write the next shard (ids continue from the last one) atomically and add it to the saved manifest."""
        start, index = self.done_rows, len(self.manifest.shards)
        rows = ShardRows(ids=np.arange(start, start + len(texts), dtype=np.int64), texts=texts,
                         vectors={embedding_column(p, i): vectors[p] for i, p in enumerate(self.poolings)},
                         n_tokens=np.asarray(n_tokens, dtype=np.int32), extra=extra)
        self.begin_writing()
        started = time.perf_counter()
        path, checksum = ShardWriter(self.out, self.cfg.format, self.cfg.dtype).write(index, rows)
        self.timing["write_s"] += time.perf_counter() - started
        self.timing["rows"] += len(texts)
        self.manifest.shards.append(ShardInfo(file=path.name, rows=len(texts), id_start=start,
                                              id_end=start + len(texts) - 1, sha256=checksum,
                                              n_tokens=int(rows.n_tokens.sum()), bytes=path.stat().st_size))
        self.manifest.save(self.out)
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
        save_token_outputs(self.teacher, self.out)  # before the manifest says complete: a crash here resumes
        record_files(self.out, manifest)  # the checksum of every file written since the manifest was begun
        manifest.complete = True
        manifest.save(self.out)
        report_stats(self.cfg, stats)
        return manifest


def start_encode(cfg: EncodeConfig, device: str | None = None) -> EncodeRun:
    """Check flags, corpus and output, load the teacher (on `device`, default cfg.device) and prepare the manifest.

    When the output holds a cache made with the same settings, the run resumes after its last complete shard;
    when that cache is complete, the returned run has nothing to do (`already_complete`).
    """
    validate(cfg)
    files = resolve_corpus(cfg.corpus, cfg.text_column)
    out = Path(cfg.out)
    lock = FolderLock(out, "tc encode").acquire()  # before anything in `out` is read: one writer at a time
    try:
        run = _start_encode(cfg, files, out, device)
    except BaseException:
        lock.release()
        raise
    run.lock = lock
    return run


def _start_encode(cfg: EncodeConfig, files: list[Path], out: Path, device: str | None) -> EncodeRun:
    existing = None if cfg.force else prepare_output(out)
    replacing = (load_old(out) or True) if cfg.force and has_cache(out) else False
    teacher = load_teacher(cfg.teacher, device or cfg.device, cfg.online)
    if cfg.max_length > teacher.max_position:
        log(cfg, f"warning: --max-length {cfg.max_length}: the teacher reads at most {teacher.max_position} "
                 f"word-pieces; using {teacher.max_position}")
    poolings = cfg.pooling or [teacher.st_config.get("pooling", "mean")]
    normalize = cfg.normalize if cfg.normalize is not None else teacher.st_config.get("normalize", False)
    max_length = min(cfg.max_length, teacher.max_position)
    precision = cfg.precision
    if precision == "auto" and existing is not None:
        precision = existing.precision  # a resumed run keeps the precision the cache was started with
    manifest = CacheManifest(
        teacher=teacher.name if teacher.folder is None else str(teacher.folder.resolve()),
        teacher_hash=teacher.weights_hash(), pooling=poolings, max_length=max_length, dim=teacher.dim,
        dtype=cfg.dtype, normalize=bool(normalize), format=cfg.format, shard_size=cfg.shard_size,
        corpus_fingerprint=corpus_fingerprint(files, cfg.text_column), corpus_files=[str(f) for f in files],
        precision=precision, text_column=cfg.text_column,
        columns={embedding_column(p, i): p for i, p in enumerate(poolings)})
    manifest.extra["max_rows"] = cfg.max_rows
    run = EncodeRun(cfg=cfg, files=files, out=out, teacher=teacher, poolings=poolings, normalize=bool(normalize),
                    max_length=max_length, precision=precision, manifest=manifest, stats=CorpusStats(), chunks=None,
                    replacing=replacing)
    if existing is not None:
        diffs = manifest.differences(existing)
        if existing.extra.get("max_rows") != cfg.max_rows:
            diffs.append(f"max_rows: {existing.extra.get('max_rows')!r} != {cfg.max_rows!r}")
        if diffs:
            raise CacheMismatchError(f"--out {out}: holds a cache made with other settings ({'; '.join(diffs)}); "
                                     "use --force to start afresh")
        for note in recheck(out, existing):  # re-read every kept shard and file: a resume trusts nothing on disk
            print(f"warning: {note}", file=sys.stderr)
        if existing.complete:
            if save_token_outputs(teacher, out):
                log(cfg, f"{out}: added the teacher's per-token outputs ({TOKEN_OUTPUTS_FILE})")
                record_files(out, existing)
                existing.save(out)
            log(cfg, f"{out}: cache already complete ({existing.rows:,} rows, checksums match); nothing to do")
            run.manifest = existing
            return run
        manifest.shards, manifest.created, manifest.files = existing.shards, existing.created, existing.files
        if "other_files" in existing.extra:
            manifest.extra["other_files"] = existing.extra["other_files"]
        remove_strays(out, manifest)
    rows_iter = iter_corpus(files, cfg.text_column, cfg.bad_utf8, max_chars=max_length * 100, stats=run.stats)
    if cfg.max_rows:
        rows_iter = itertools.islice(rows_iter, cfg.max_rows)
    run.done_rows = sum(s.rows for s in manifest.shards)
    rows_iter = itertools.islice(rows_iter, run.done_rows, None)
    first = next(rows_iter, None)
    if first is None and run.done_rows == 0:
        raise CorpusError(f"--corpus {', '.join(map(str, files))}: no non-blank line to encode")
    run.chunks = chunked(itertools.chain([first] if first is not None else [], rows_iter), cfg.shard_size)
    if not run.replacing:
        run.begin_writing()  # a --force run begins at its first shard, so a failure before that keeps the old cache
    if run.done_rows:
        log(cfg, f"resuming after {len(manifest.shards)} complete shards ({run.done_rows:,} rows)")
    return run


def encode_corpus(cfg: EncodeConfig) -> CacheManifest:
    """Encode the corpus into a complete cache at cfg.out, resuming after the last complete shard."""
    with start_encode(cfg) as run:  # holds the folder lock until the end, however it ends
        return run.manifest if run.already_complete else encode_local(run)


def encode_local(run: EncodeRun) -> CacheManifest:
    """The local engine's loop: read and tokenise ahead, encode each shard, commit it, then finish the cache."""
    cfg = run.cfg
    encoder = run.make_encoder()
    total = [None]
    threading.Thread(target=lambda: total.__setitem__(0, count_rows(run.files)), daemon=True).start()
    progress = Progress("encode", None, quiet=cfg.quiet, start=run.done_rows)
    for texts, token_ids in prefetch(run.chunks, encoder.tokenize):
        if run.precision == "auto":
            run.set_precision(resolve_precision(encoder, token_ids, cfg))
        encoder.precision = run.precision
        progress.total = min(total[0], cfg.max_rows or total[0]) if total[0] else None
        started = time.perf_counter()
        vectors = encoder.encode_tokenized(token_ids, on_batch=lambda n, t: progress.update(n, tokens=t))
        run.timing["encode_s"] += time.perf_counter() - started
        run.commit(texts, vectors, np.fromiter((len(x) for x in token_ids), dtype=np.int32, count=len(token_ids)))
    progress.close()
    return run.finish()


def resolve_precision(encoder: BatchEncoder, token_ids: list[list[int]], cfg: EncodeConfig) -> str:
    """Pick bf16/fp16 where the hardware makes it pay and a calibration batch shows the vectors stay put."""
    dev = encoder.teacher.device
    candidate = "fp16" if dev.type == "cuda" else ("bf16" if cpu_has_fast_bf16() else "fp32")
    if candidate == "fp32":
        return "fp32"
    encoder.precision = candidate
    ok, worst = encoder.calibrate(token_ids)
    log(cfg, f"precision: {candidate} (min cosine to fp32 {worst:.6f})" if ok else
        f"precision: fp32 ({candidate} reached only cosine {worst:.6f} to fp32)")
    return candidate if ok else "fp32"


def report_stats(cfg: EncodeConfig, stats: CorpusStats) -> None:
    """Tell the user what the reader skipped or repaired."""
    if stats.blank_lines:
        log(cfg, f"skipped {stats.blank_lines:,} blank lines")
    if stats.bad_utf8_count:
        action = "replaced bad bytes in" if cfg.bad_utf8 == "replace" else "skipped"
        shown = ", ".join(stats.bad_utf8_lines[:5]) + (" ..." if stats.bad_utf8_count > 5 else "")
        log(cfg, f"warning: {action} {stats.bad_utf8_count:,} lines with invalid UTF-8 ({shown})")
    if stats.truncated_lines:
        log(cfg, f"warning: truncated {stats.truncated_lines:,} over-long lines to {cfg.max_length * 100:,} chars")
    if stats.missing_text:
        log(cfg, f"warning: skipped {stats.missing_text:,} rows with no {cfg.text_column!r} value (key missing or "
                 "null); they are not counted as blank")
    if stats.ragged_count:
        shown = ", ".join(stats.ragged_rows[:5]) + (" ..." if stats.ragged_count > 5 else "")
        log(cfg, f"warning: {stats.ragged_count:,} CSV rows have another number of fields than the header (an "
                 f"unquoted separator?); their {cfg.text_column!r} value may be cut or shifted: {shown}")


def teacher_encoder(name_or_path: str | None = None, device: str = "cpu", precision: str = "auto",
                    max_length: int = 256, pooling: str | None = None, max_tokens: int | None = None,
                    online: bool = False):
    """A function sentences -> vectors (np.ndarray) that pools exactly as `tc encode` does, for eval and queries."""
    teacher = load_teacher(name_or_path, device, online)
    poolings = [pooling or teacher.st_config.get("pooling", "mean")]
    normalize = bool(teacher.st_config.get("normalize", False))
    encoder = BatchEncoder(teacher, poolings, min(max_length, teacher.max_position), normalize, "fp32",
                           max_tokens, None)
    chosen = [precision]

    def encode(sentences: list[str]) -> np.ndarray:
        ids = encoder.tokenize(list(sentences))
        if chosen[0] == "auto":
            chosen[0] = resolve_precision(encoder, ids, EncodeConfig(quiet=True))
        encoder.precision = chosen[0]
        return encoder.encode_tokenized(ids)[poolings[0]]

    encode.teacher = teacher  # type: ignore[attr-defined]
    return encode
