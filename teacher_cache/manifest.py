"""The cache manifest: what made the cache, and every shard with its rows, id range and checksum."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from teacher_cache.atomic import atomic_write
from teacher_cache.errors import CacheError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# Settings that define what a cache *is*: a resumed run must agree on all of them.
IDENTITY_KEYS = ("teacher_hash", "pooling", "max_length", "normalize", "dtype", "format",
                 "shard_size", "corpus_fingerprint", "precision", "text_column")


@dataclass
class ShardInfo:
    """One complete shard: file name, row count, first and last id, sha256 of the file."""

    file: str
    rows: int
    id_start: int
    id_end: int  # inclusive
    sha256: str
    n_tokens: int = 0
    bytes: int = 0  # file size; 0 in caches written before sizes were recorded


@dataclass
class CacheManifest:
    """Everything a reader needs to trust and interpret a teacher cache."""

    teacher: str
    teacher_hash: str
    pooling: list[str]
    max_length: int
    dim: int
    dtype: str
    normalize: bool
    format: str
    shard_size: int
    corpus_fingerprint: str
    corpus_files: list[str]
    precision: str = "fp32"
    text_column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    rows: int = 0
    skipped_rows: int = 0
    tokenizer_dir: str | None = "tokenizer"
    token_embeddings_file: str | None = "token_embeddings.safetensors"
    kind: str = "embeddings"
    # every other file of the cache (tokenizer/*, token_embeddings.safetensors, ...): relative path -> sha256, bytes
    files: dict[str, dict] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str = ""
    updated: str = ""
    extra: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """Return the settings that must match for a cache to be resumed or extended."""
        return {k: getattr(self, k) for k in IDENTITY_KEYS}

    def differences(self, other: CacheManifest) -> list[str]:
        """Name each identity setting that differs between two manifests, as 'key: ours != theirs'."""
        mine, theirs = self.identity(), other.identity()
        return [f"{k}: {theirs[k]!r} != {mine[k]!r}" for k in IDENTITY_KEYS if mine[k] != theirs[k]]

    def content_fingerprint(self) -> str:
        """sha256 over every shard (name, rows, checksum) and recorded file: equal only for the same cache content."""
        digest = hashlib.sha256()
        for s in self.shards:
            digest.update(f"{s.file}:{s.rows}:{s.id_start}:{s.sha256}\n".encode())
        for name in sorted(self.files):
            digest.update(f"{name}:{self.files[name].get('sha256')}\n".encode())
        return digest.hexdigest()[:32]

    @property
    def embedding_columns(self) -> list[str]:
        """Column names of the embedding columns, in the order of `pooling`."""
        return [embedding_column(p, i) for i, p in enumerate(self.pooling)]

    def to_dict(self) -> dict:
        """Plain-JSON form of the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CacheManifest:
        """Build a manifest from its JSON form, tolerating keys written by newer versions."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        keys = set(ShardInfo.__dataclass_fields__)
        kwargs["shards"] = [ShardInfo(**{k: v for k, v in s.items() if k in keys}) for s in data.get("shards", [])]
        return cls(**kwargs)

    def save(self, directory: str | Path) -> None:
        """Write manifest.json atomically (temporary file, fsync, rename)."""
        self.rows = sum(s.rows for s in self.shards)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.created = self.created or now
        self.updated = now
        atomic_write(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> CacheManifest:
        """Read manifest.json from a cache folder, with one-line errors for the usual mistakes."""
        directory = Path(directory)
        if not directory.exists():
            raise CacheError(f"{directory}: no such cache folder")
        if not directory.is_dir():
            raise CacheError(f"{directory}: is not a folder (a cache is a folder with {MANIFEST_NAME})")
        path = directory / MANIFEST_NAME
        if not path.exists():
            raise CacheError(f"{directory}: not a teacher cache (no {MANIFEST_NAME}); make one with `tc encode`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CacheError(f"{path}: unreadable manifest ({exc})") from None
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise CacheError(f"{path}: malformed manifest ({exc})") from None


def embedding_column(pooling: str, index: int) -> str:
    """The first pooling is stored as `embedding`, each further one as `embedding_<pooling>`."""
    return "embedding" if index == 0 else f"embedding_{pooling}"
