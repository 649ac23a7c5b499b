"""`tc encode --teacher B --out CACHE` on a complete cache made by another teacher: add B as a side teacher.

B encodes the text of every row of every main shard of the newest version (read from the shards, not the corpus)
into side shards teachers/<name>/shard-*.arrow aligned one to one with the main shards (same base names and ids; no
text). Each is written atomically and the main manifest is saved (atomically, under the folder lock) after each, so
a killed run resumes after the last complete side shard. Then B's tokenizer, its own token outputs and its outputs
over the MAIN teacher's vocabulary (what a static student, which always uses the main tokenizer, starts from) go into
its folder, recorded in its entry. A newer main version leaves the side teacher incomplete: rerunning adds the side
shards of the new main shards only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, CacheMismatchError, UserError, reason
from teacher_cache.base.progress import Progress, log, warn
from teacher_cache.base.safe_paths import remove_file, remove_tree
from teacher_cache.cache_files import file_record
from teacher_cache.cache_writer import CacheWriter
from teacher_cache.encode.batching import BatchEncoder, resolve_precision
from teacher_cache.encode.config import EncodeConfig
from teacher_cache.encode.corpus import DEFAULT_CORPUS, CorpusStats
from teacher_cache.encode.teacher import Teacher
from teacher_cache.encode.token_outputs import keep_shared_copy, load_shared_copy, mean_output, save_token_outputs
from teacher_cache.fingerprint import corpus_fingerprint, fingerprint_like, is_legacy_fingerprint
from teacher_cache.manifest import TOKEN_OUTPUTS_FILE, CacheManifest, ShardInfo, SideTeacher, embedding_column
from teacher_cache.shards import ShardRows, read_shard, sha256_file
from teacher_cache.side_teachers import (
    MAIN_VOCAB_OUTPUTS_FILE,
    MAIN_VOCAB_OUTPUTS_KEY,
    SideShardWriter,
    aligned,
    main_name,
    side_folder,
    side_shard_name,
    side_shard_problem,
    teacher_slug,
)

SIDE_SETTINGS = ("pooling", "normalize", "max_length", "dtype")  # a resumed side teacher must agree on these


def is_side_run(cfg: EncodeConfig, existing: CacheManifest | None, teacher_hash: str) -> bool:
    """Whether this `tc encode` adds a side teacher: --out is a complete sentence-vector cache of another teacher,
    and no --force."""
    return (existing is not None and not cfg.force and existing.complete and existing.kind == "embeddings"
            and existing.teacher_hash != teacher_hash)


def add_side_teacher(cfg: EncodeConfig, files: list[Path], writer: CacheWriter, teacher: Teacher,
                     teacher_hash: str, existing: CacheManifest):
    """Add (or complete) `teacher` as a side teacher of the cache `existing` at writer.out; return an EncodeRun with
    nothing left to do (the caller's lock is held throughout)."""
    from teacher_cache.encode.run import EncodeRun

    where = writer.where
    if writer.remote:
        raise UserError(f"--out {where}: side teachers are added to a local cache folder only (copy the cache to "
                        "a folder, add the teacher there, then upload it)")
    check_corpus(cfg, files, existing, where)
    name, entry = side_entry(cfg, teacher, teacher_hash, existing, where)
    out = writer.out
    version = existing.find_version(None)
    main_shards = existing.shards[:version.shards]
    kept = recheck_side(out, entry, main_shards)
    existing.teachers[name] = entry
    todo = main_shards[kept:]
    if not todo and entry.complete and entry.files:
        log(f"{where}: side teacher {name} already complete ({kept} shard(s), checksums match); nothing to do")
        return finished_run(cfg, files, writer, teacher, entry, existing, EncodeRun)
    (out / entry.folder).mkdir(parents=True, exist_ok=True)
    entry.complete = False
    existing.save(out)  # the entry is listed before its first shard: a killed run resumes it
    if kept:
        log(f"{where}: side teacher {name}: resuming after {kept} complete side shard(s), {len(todo)} to encode")
    encode_side_shards(cfg, out, teacher, entry, existing, todo, name)
    save_side_files(out, teacher, teacher_hash, entry, existing)
    entry.complete = True
    existing.save(out)
    log(f"{where}: side teacher {name} ({teacher.name}): {sum(s.rows for s in entry.shards):,} rows x {entry.dim} "
        f"({', '.join(entry.pooling)}) in {len(entry.shards)} shard(s); learn it with `tc train-student "
        f"--teacher-column {name}` or `--targets {main_name(existing)},{name}`")
    return finished_run(cfg, files, writer, teacher, entry, existing, EncodeRun)


def finished_run(cfg, files, writer, teacher, entry: SideTeacher, manifest: CacheManifest, run_class):
    """An EncodeRun with nothing to encode (the engines then return its manifest)."""
    return run_class(cfg=cfg, files=files, writer=writer, teacher=teacher, poolings=list(entry.pooling),
                     normalize=entry.normalize, max_length=entry.max_length, precision=entry.precision,
                     manifest=manifest, stats=CorpusStats(), chunks=None)


def corpus_given(cfg: EncodeConfig) -> bool:
    """Whether --corpus was passed (anything but the default)."""
    return list(cfg.corpus) != [str(DEFAULT_CORPUS)]


def check_corpus(cfg: EncodeConfig, files: list[Path], existing: CacheManifest, where: str) -> None:
    """--corpus is optional when adding a side teacher; given, it must be the newest version's corpus."""
    if not corpus_given(cfg):
        return
    recorded = existing.find_version(None).corpus_fingerprint
    if recorded and is_legacy_fingerprint(recorded):
        now = fingerprint_like(recorded, files, cfg.text_column)
    else:
        now = corpus_fingerprint(files, cfg.text_column)
    if now != recorded:
        raise CacheMismatchError(f"--corpus {', '.join(map(str, files))}: not the corpus of {where}'s newest "
                                 f"version; update the cache with its main teacher first (`tc encode --corpus ... "
                                 f"--out {where} --teacher {existing.teacher}`), then add this side teacher (without "
                                 "--corpus: it encodes the cache's own texts)")


def side_entry(cfg: EncodeConfig, teacher: Teacher, teacher_hash: str, existing: CacheManifest,
               where: str) -> tuple[str, SideTeacher]:
    """The side teacher's name and entry: the one listed with this weights hash (its settings checked against
    the flags), or a new one named after the teacher."""
    poolings = cfg.pooling or [teacher.st_config.get("pooling", "mean")]
    normalize = bool(cfg.normalize if cfg.normalize is not None else teacher.st_config.get("normalize", False))
    max_length = min(cfg.max_length, teacher.max_position)
    fresh = SideTeacher(folder="", teacher=teacher.name if teacher.folder is None else str(teacher.folder.resolve()),
                        teacher_hash=teacher_hash, pooling=list(poolings), dim=teacher.dim, dtype=cfg.dtype,
                        precision=cfg.precision, normalize=normalize, max_length=max_length,
                        columns={embedding_column(p, i): p for i, p in enumerate(poolings)})
    for name, entry in existing.teachers.items():
        if entry.teacher_hash == teacher_hash:
            differences = [f"{k}: {getattr(entry, k)!r} != {getattr(fresh, k)!r}" for k in SIDE_SETTINGS
                           if getattr(entry, k) != getattr(fresh, k)]
            if differences:
                raise CacheMismatchError(f"--out {where}: side teacher {name} was added with other settings "
                                         f"({'; '.join(differences)}); rerun with the same flags")
            if entry.precision == "auto" or cfg.precision != "auto":
                entry.precision = entry.precision if cfg.precision == "auto" else cfg.precision
            return name, entry
    base = teacher_slug(fresh.teacher)
    name = base
    taken = set(existing.teachers) | {main_name(existing)}
    if name in taken:
        name = f"{base}-{teacher_hash[:8]}"
    fresh.folder = side_folder(name)
    return name, fresh


def recheck_side(out: Path, entry: SideTeacher, main_shards: list[ShardInfo]) -> int:
    """Keep the side shards, from the first, that are aligned with the main ones and whole on disk (checksums);
    drop the rest and the side folder's stray shards; drop recorded files that changed. The number kept."""
    kept = 0
    for side, main in zip(entry.shards, main_shards, strict=False):
        if not aligned(entry, side, main):
            break
        problem = side_shard_problem(out, entry, side)
        if problem:
            warn(f"{problem}; encoding the side teacher again from shard {kept}")
            break
        kept += 1
    del entry.shards[kept:]
    folder = out / entry.folder
    keep = {Path(s.file).name for s in entry.shards}
    if folder.is_dir():
        for path in folder.glob("shard-*"):
            if path.name not in keep:
                remove_file(path)  # a partial or unlisted side shard of a killed run
    for rel, record in list(entry.files.items()):
        from teacher_cache.cache_files import file_problem

        problem = file_problem(out, rel, record)
        if problem:
            warn(f"{problem}; writing it again")
            tokenizer = f"{entry.folder}/tokenizer/"
            if rel.startswith(tokenizer):
                remove_tree(folder / "tokenizer")
                for other in [n for n in entry.files if n.startswith(tokenizer)]:
                    entry.files.pop(other, None)
            else:
                remove_file(out / rel)
                entry.files.pop(rel, None)
            entry.complete = False
    return kept


def encode_side_shards(cfg: EncodeConfig, out: Path, teacher: Teacher, entry: SideTeacher, manifest: CacheManifest,
                       todo: list[ShardInfo], name: str) -> None:
    """Encode the texts of each main shard in `todo` with the side teacher; write each side shard, list it, save."""
    shard_writer = SideShardWriter(out, manifest.format, entry.dtype)
    precision = "fp32" if entry.precision == "auto" else entry.precision
    encoder = BatchEncoder(teacher, list(entry.pooling), entry.max_length, entry.normalize, precision,
                           cfg.max_tokens, cfg.batch_size)
    progress = Progress(f"side {name}", sum(s.rows for s in todo), quiet=cfg.quiet)
    for main in todo:
        table = read_shard(out / main.file, ["id", "text"])
        ids = table.column("id").to_numpy().astype(np.int64)
        token_ids = encoder.tokenize(table.column("text").to_pylist())
        if entry.precision == "auto":
            entry.precision = encoder.precision = resolve_precision(encoder, token_ids, cfg.quiet)
        vectors = encoder.encode_tokenized(token_ids, on_batch=lambda n, t: progress.update(n, tokens=t))
        n_tokens = np.fromiter((len(x) for x in token_ids), dtype=np.int32, count=len(token_ids))
        rows = ShardRows(ids=ids, texts=[], n_tokens=n_tokens,
                         vectors={embedding_column(p, i): vectors[p] for i, p in enumerate(entry.pooling)})
        rel = side_shard_name(entry, main.file)
        path, checksum = shard_writer.write_named(rel, rows)
        entry.shards.append(ShardInfo(file=rel, rows=main.rows, id_start=main.id_start, id_end=main.id_end,
                                      sha256=checksum, n_tokens=int(n_tokens.sum()), bytes=path.stat().st_size))
        manifest.save(out)  # the commit point of this side shard
    progress.close()


def save_side_files(out: Path, teacher: Teacher, teacher_hash: str, entry: SideTeacher,
                    manifest: CacheManifest) -> None:
    """The side teacher's tokenizer, token outputs and outputs over the main vocabulary, each recorded."""
    from safetensors.numpy import save_file

    folder = out / entry.folder
    target = folder / "tokenizer"
    try:
        if not (target / "tokenizer.json").exists():
            teacher.save_tokenizer(target)
        save_token_outputs(teacher, folder, teacher_hash)
        target = folder / MAIN_VOCAB_OUTPUTS_FILE
        if not target.exists():
            matrix = kept_main_vocab_outputs(teacher, teacher_hash, out / (manifest.tokenizer_dir or "tokenizer")
                                             / "tokenizer.json")
            with atomic_path(target) as tmp:
                save_file({MAIN_VOCAB_OUTPUTS_KEY: matrix}, str(tmp))
    except Exception as exc:  # OSError, or safetensors' own error type for a full disk
        raise CacheError(f"{target}: cannot write ({reason(exc)}); complete side shards are kept: fix this and "
                         "rerun to resume") from None
    names = sorted(p.relative_to(out).as_posix() for p in (folder / "tokenizer").rglob("*") if p.is_file())
    names += [f"{entry.folder}/{TOKEN_OUTPUTS_FILE}", f"{entry.folder}/{MAIN_VOCAB_OUTPUTS_FILE}"]
    for rel in names:
        if rel not in entry.files:
            entry.files[rel] = file_record(out / rel)


def kept_main_vocab_outputs(teacher: Teacher, teacher_hash: str, tokenizer_json: Path) -> np.ndarray:
    """main_vocab_outputs as float16, kept in the user cache per (side teacher, main tokenizer) like the token
    outputs, so a second cache of the same two teachers does not run the vocabulary again."""
    key = f"{teacher_hash}-{sha256_file(tokenizer_json)[:16]}"
    shape = (len(main_vocab_words(tokenizer_json)), teacher.dim)
    matrix = load_shared_copy(key, shape, "main-vocab-outputs", MAIN_VOCAB_OUTPUTS_KEY)
    if matrix is None:
        matrix = main_vocab_outputs(teacher, tokenizer_json).astype(np.float16)
        keep_shared_copy(key, matrix, "main-vocab-outputs", MAIN_VOCAB_OUTPUTS_KEY)
    return matrix


def main_vocab_words(tokenizer_json: Path) -> list[str]:
    """Each token of the main tokenizer as text: its word-piece string with a continuation mark ('##', or a
    leading '▁'/'Ġ') stripped."""
    from tokenizers import Tokenizer

    main = Tokenizer.from_file(str(tokenizer_json))
    words = []
    for i in range(main.get_vocab_size(with_added_tokens=True)):
        token = main.id_to_token(i) or ""
        words.append(token[2:] if token.startswith("##") else token.lstrip("▁Ġ") or token)
    return words


def main_vocab_outputs(teacher: Teacher, tokenizer_json: Path, batch_size: int = 1024) -> np.ndarray:
    """(vocab_main, dim) float32: the side teacher's mean-pooled output for each main token's text, run through its
    own tokenizer as a sentence of its own (special tokens added), in batches of equal length (no padding)."""
    from tokenizers import Tokenizer

    words = main_vocab_words(tokenizer_json)
    own = Tokenizer.from_str(teacher.tokenizer.backend_tokenizer.to_str())
    own.no_padding()
    own.enable_truncation(min(teacher.max_position, 32))
    fallback = teacher.tokenizer.unk_token_id or 0
    ids = [e.ids or [fallback] for e in own.encode_batch(words)]
    out = np.empty((len(words), teacher.dim), dtype=np.float32)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        for first in range(0, len(rows), batch_size):
            take = rows[first:first + batch_size]
            out[take] = mean_output(teacher, torch.tensor([ids[r] for r in take], dtype=torch.long))
    return out
