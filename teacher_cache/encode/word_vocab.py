"""`tc vocab`: the corpus's frequent whole words that word-pieces split, each with the teacher's output for it.

A static student is a bag of the teacher's word-pieces, and the mean of `epi ##le ##psy` says little about
"epilepsy". model2vec's potion models add frequent whole words to the vocabulary; this builds the same from a cache:

1. count the words of the cache's texts, split exactly as the student's tokenizer splits them (the cache's
   tokenizer.json: its normaliser, then its pre-tokenizer; for BERT uncased: lowercase, accents stripped, split on
   whitespace and punctuation), streaming one shard at a time;
2. keep the most frequent (--words, each seen at least --min-count times) that the word-piece vocabulary cuts into
   two or more pieces;
3. run each through the teacher alone, as token_outputs.py runs single tokens: `[CLS] pieces... [SEP]`, the last
   hidden states mean-pooled, in fp32; words of one length go together, so no batch is padded;
4. write VOCAB_WORDS_FILE (one word a line, in the order of their new ids) and VOCAB_WORDS_OUTPUTS_FILE (float16,
   words x dim) into the cache, atomically, recorded in the manifest's `files` (so `tc verify` checks them) with
   what made them in `extra["vocab_words"]`: a rerun with the same settings on the same shards does nothing.

The student side (student/vocab.py) appends the words to the WordPiece vocabulary (ids from the base vocabulary's
size on): WordPiece matches longest-first from the start of each word, so a listed word becomes one id.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, UserError, first_line
from teacher_cache.base.lock import FolderLock
from teacher_cache.base.progress import Progress, log
from teacher_cache.base.settings import Checked, count, setting
from teacher_cache.cache_files import file_problem, file_record
from teacher_cache.manifest import VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE, WORD_OUTPUTS_KEY, CacheManifest
from teacher_cache.reader import TeacherCache, open_cache
from teacher_cache.storage import is_url

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from teacher_cache.encode.teacher import Teacher

TEXT_SLICE = 10_000  # texts turned into Python strings at a time: a shard's whole text column never is
EXTRA_KEY = "vocab_words"  # manifest.extra entry: the settings that made the files, and what they cover


@dataclass
class VocabConfig(Checked):
    """Every knob of `tc vocab`."""

    shards: str = setting("out", "Cache written by `tc encode` (a local folder): its texts are counted, and the "
                                 "words are written into it.")
    words: int = setting(50_000, "Most whole words to add, the most frequent first.", check=count(1, 1_000_000))
    min_count: int = setting(5, "Leave out words seen fewer times than this in the cache's texts.", check=count(1))
    teacher: str | None = setting(None, "Teacher folder or hub name (default: the one the cache names); it must be "
                                        "the cache's teacher (same weights).")
    batch_size: int = setting(512, "Words per forward pass of the teacher.", check=count(1))
    device: str = setting("cpu", "cpu or cuda.")
    quiet: bool = setting(False, "No progress on stderr.")
    online: bool = setting(False, "Allow downloading a hub teacher (offline by default).")


@dataclass
class WordChoice:
    """The words kept (most frequent first), their word-piece ids, and what they cover of the counted text."""

    words: list[str]
    pieces: list[list[int]]
    rows: int  # texts counted
    occurrences: int  # words in those texts, all of them
    distinct: int  # distinct words
    split: int  # distinct words seen >= min_count times that word-pieces cut into 2+ pieces
    covered: int  # occurrences of the kept words

    def summary(self) -> dict:
        """What manifest.extra records about the choice (and `tc vocab` reports)."""
        return {"words": len(self.words), "rows": self.rows, "word_occurrences": self.occurrences,
                "distinct_words": self.distinct, "split_words": self.split,
                "coverage": round(self.covered / max(self.occurrences, 1), 6)}


def wordpiece_tokenizer(path: Path) -> Tokenizer:
    """The cache's tokenizer.json, refused in one line unless its model is WordPiece (the words are appended to a
    WordPiece vocabulary; BPE and Unigram vocabularies match differently)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # missing or foreign: one line naming it
        raise CacheError(f"{path}: unreadable tokenizer ({first_line(exc)})") from None
    if not isinstance(tokenizer.model, WordPiece):
        raise UserError(f"tc vocab: {path} is a {type(tokenizer.model).__name__} tokenizer; whole words are added "
                        "to WordPiece vocabularies (BERT-style teachers) only")
    return tokenizer


def words_of(tokenizer: Tokenizer, text: str) -> list[str]:
    """The words of `text` as the tokenizer's WordPiece model sees them: normalised, then pre-tokenized."""
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    if pre_tokenizer is None:
        return text.split()
    return [word for word, _ in pre_tokenizer.pre_tokenize_str(text)]


def count_words(cache: TeacherCache, tokenizer: Tokenizer, quiet: bool = False) -> tuple[Counter, int]:
    """How often each word occurs in the cache's texts (shard by shard, a slice of texts at a time), and the rows."""
    counts: Counter = Counter()
    progress = Progress("vocab: counting words", len(cache), "rows", quiet=quiet)
    rows = 0
    for index, info in enumerate(cache.shards):  # the version read, less the rows it deleted
        texts = cache.read_shard(index, ["text"]).column("text")
        live = cache.live(np.arange(info.id_start, info.id_end + 1))
        if not live.all():
            texts = texts.filter(pa.array(live))
        for start in range(0, len(texts), TEXT_SLICE):
            chunk = texts.slice(start, TEXT_SLICE).to_pylist()
            for text in chunk:
                counts.update(words_of(tokenizer, text or ""))
            rows += len(chunk)
            progress.update(len(chunk))
    progress.close()
    return counts, rows


def choose_words(counts: Counter, tokenizer: Tokenizer, limit: int, min_count: int, rows: int = 0) -> WordChoice:
    """The `limit` most frequent words seen at least `min_count` times that the WordPiece model cuts into 2+ pieces
    (ties by the word itself, so the order never depends on the corpus order)."""
    model = tokenizer.model
    ranked = sorted(((n, w) for w, n in counts.items() if n >= min_count), key=lambda nw: (-nw[0], nw[1]))
    words, pieces, split, covered = [], [], 0, 0
    for n, word in ranked:
        if "\n" in word or "\r" in word:  # never from a whitespace-splitting pre-tokenizer, but a line is a word
            continue
        ids = [token.id for token in model.tokenize(word)]
        if len(ids) < 2:  # one piece already, or [UNK] (an unknown character, or longer than the model takes)
            continue
        split += 1
        if len(words) < limit:
            words.append(word)
            pieces.append(ids)
            covered += n
    return WordChoice(words, pieces, rows, sum(counts.values()), len(counts), split, covered)


def compute_word_outputs(teacher: Teacher, pieces: list[list[int]], batch_size: int = 512,
                         quiet: bool = False) -> np.ndarray:
    """(words, dim) float32: the teacher's mean-pooled output for each word's pieces run on their own, framed as
    token_outputs frames a single token; words of one length share a batch, so none is padded."""
    import torch

    from teacher_cache.encode.token_outputs import mean_output, token_frame_ids

    start, end = token_frame_ids(teacher)
    head, tail = [start] if start is not None else [], [end] if end is not None else []
    out = np.empty((len(pieces), teacher.dim), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(pieces):
        by_length.setdefault(len(ids), []).append(index)
    progress = Progress("vocab: teacher", len(pieces), "words", quiet=quiet)
    for length in sorted(by_length):
        indices = by_length[length]
        for first in range(0, len(indices), batch_size):
            take = indices[first:first + batch_size]
            out[take] = mean_output(teacher, torch.tensor([head + pieces[i] + tail for i in take]))
            progress.update(len(take))
    progress.close()
    return out


def shards_key(manifest: CacheManifest) -> str:
    """A digest of the cache's shards (names, rows, checksums) and newest version: the texts the words were counted
    on."""
    digest = hashlib.sha256()
    for s in manifest.shards:
        digest.update(f"{s.file}:{s.rows}:{s.sha256}\n".encode())
    for v in manifest.versions[-1:]:  # an update that only removed rows adds no shard, but changes the texts
        digest.update(f"version {v.version}:{v.rows}\n".encode())
    return digest.hexdigest()[:32]


def vocab_settings(cfg: VocabConfig, manifest: CacheManifest) -> dict:
    """What makes the word files what they are: a rerun that agrees on all of it has nothing to do."""
    return {"words": cfg.words, "min_count": cfg.min_count, "teacher_hash": manifest.teacher_hash,
            "shards": shards_key(manifest)}


def up_to_date(out: Path, manifest: CacheManifest, settings: dict) -> bool:
    """True when the cache holds word files made with `settings`, both recorded and matching their checksums."""
    if (manifest.extra.get(EXTRA_KEY) or {}).get("settings") != settings:
        return False
    names = (VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE)
    return all(name in manifest.files and file_problem(out, name, manifest.files[name]) is None for name in names)


def load_cache_teacher(cfg: VocabConfig, manifest: CacheManifest, tokenizer: Tokenizer) -> Teacher:
    """The teacher that made the cache (--teacher, or the one its manifest names), checked to be it: the same
    weights and the same word-piece vocabulary as the cache's tokenizer."""
    from teacher_cache.encode.teacher import load_teacher

    name = cfg.teacher or manifest.teacher
    try:
        teacher = load_teacher(name, cfg.device, cfg.online)
    except CacheError as exc:
        if cfg.teacher:
            raise
        raise CacheError(f"{exc} (the teacher {cfg.shards} was made with; pass --teacher where it is now)") from None
    if teacher.weights_hash() != manifest.teacher_hash:
        raise CacheError(f"--teacher {name}: not the teacher that made {cfg.shards} (other weights); pass the "
                         "one the cache was encoded with")
    if teacher.tokenizer.backend_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise CacheError(f"--teacher {name}: its vocabulary differs from {cfg.shards}'s tokenizer/")
    return teacher


def write_word_files(out: Path, words: list[str], outputs: np.ndarray) -> None:
    """VOCAB_WORDS_FILE and VOCAB_WORDS_OUTPUTS_FILE in `out`, each atomically (a crash leaves the old or the new)."""
    from safetensors.numpy import save_file

    with atomic_path(out / VOCAB_WORDS_OUTPUTS_FILE) as tmp:
        save_file({WORD_OUTPUTS_KEY: outputs.astype(np.float16)}, str(tmp))
    with atomic_path(out / VOCAB_WORDS_FILE) as tmp:
        tmp.write_text("".join(word + "\n" for word in words), encoding="utf-8")


def build_vocab(cfg: VocabConfig) -> dict:
    """Count, choose, run the teacher and write the word files into the cache `cfg.shards` (unless they are there,
    made the same way); returns what manifest.extra records (with `written`: whether anything was done)."""
    if is_url(cfg.shards):  # said before any store is reached (an s3:// one would be asked for credentials)
        raise UserError(f"--shards {cfg.shards}: tc vocab needs a local cache (a folder, not a store URL)")
    if cfg.device not in ("cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UserError(f"--device {cfg.device}: choose cpu or cuda")
    cache = open_cache(cfg.shards)  # refused when incomplete or being written
    out, manifest = Path(cfg.shards), cache.manifest
    if manifest.kind != "embeddings":
        raise CacheError(f"--shards {cfg.shards}: holds {manifest.kind}, not sentence vectors; tc vocab reads a "
                         "`tc encode` cache")
    settings = vocab_settings(cfg, manifest)
    if up_to_date(out, manifest, settings):
        log(f"{out}: whole words already there ({VOCAB_WORDS_FILE}, same settings); nothing to do", cfg.quiet)
        return {**manifest.extra[EXTRA_KEY], "written": False}
    tokenizer = wordpiece_tokenizer(cache.tokenizer_path / "tokenizer.json")
    lock = FolderLock(out, "tc vocab", flag="--shards").acquire()  # one writer: no encode rewrites it meanwhile
    try:
        if CacheManifest.load(out).content_fingerprint() != manifest.content_fingerprint():
            raise CacheError(f"--shards {cfg.shards}: the cache changed while tc vocab opened it; run it again")
        teacher = load_cache_teacher(cfg, manifest, tokenizer)  # before the long count: a wrong teacher fails fast
        counts, rows = count_words(cache, tokenizer, cfg.quiet)
        choice = choose_words(counts, tokenizer, cfg.words, cfg.min_count, rows)
        if not choice.words:
            raise UserError(f"--min-count {cfg.min_count}: no word that word-pieces split is seen that often in "
                            f"{cfg.shards}'s {rows:,} rows; lower --min-count")
        outputs = compute_word_outputs(teacher, choice.pieces, cfg.batch_size, cfg.quiet)
        write_word_files(out, choice.words, outputs)
        for name in (VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE):
            manifest.files[name] = file_record(out / name)
        manifest.extra[EXTRA_KEY] = info = {"settings": settings, **choice.summary()}
        manifest.save(out)  # last: the files it records are in place
    finally:
        lock.release()
    log(f"{out}: {len(choice.words):,} whole words (of {choice.split:,} that word-pieces split, seen at least "
        f"{cfg.min_count} times) cover {choice.covered / max(choice.occurrences, 1):.2%} of the "
        f"{choice.occurrences:,} words in {rows:,} rows; written to {VOCAB_WORDS_FILE} and "
        f"{VOCAB_WORDS_OUTPUTS_FILE}", cfg.quiet)
    return {**info, "written": True}
