"""The cache manifest: what made the cache, and every shard with its rows, id range and checksum."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.errors import CacheError, first_line
from teacher_cache.base.safe_paths import a_type, check_name, inside, name_problem, shown

MANIFEST_NAME = "manifest.json"
# The teacher's output for each vocabulary token (teacher_cache/encode/token_outputs.py writes it; the reader reads it).
TOKEN_OUTPUTS_FILE = "token_outputs.safetensors"
TOKEN_OUTPUTS_KEY = "token_outputs"
# Whole words for static students (`tc vocab`, teacher_cache/encode/word_vocab.py): the words, one a line in the order
# of their new ids, and the teacher's output for each (words x dim, float16).
VOCAB_WORDS_FILE = "vocab_words.txt"
VOCAB_WORDS_OUTPUTS_FILE = "vocab_words.safetensors"
WORD_OUTPUTS_KEY = "word_outputs"
# 2: rows keyed by their text (a `key` column), versions, duplicates counted, side teachers (teacher_cache/versions.py).
# A cache of format 1 opens as one version whose keys are hashed from its texts when they are needed.
FORMAT_VERSION = 2
VERSIONS_DIR = "versions"  # one small file per version: its deleted ids and its duplicate counts
TEACHERS_DIR = "teachers"  # one folder per side teacher: its own manifest.json and shards aligned with the main ones
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
    keys: bool = False  # holds a `key` column (format 2); older shards' keys are hashed from their texts

    def id_problems(self, where: str, ids) -> list[str]:  # ids: a numpy int64 array
        """What is wrong with this shard's ids as read back (row count, the contiguous range), if anything."""
        if len(ids) != self.rows:
            return [f"{where}: {len(ids)} rows, manifest says {self.rows}"]
        if len(ids) and not (ids[0] == self.id_start and ids[-1] == self.id_end
                             and bool(((ids[1:] - ids[:-1]) == 1).all())):  # numpy arrays
            return [f"{where}: ids are not the contiguous range {self.id_start}..{self.id_end}"]
        return []


@dataclass
class VersionInfo:
    """One version of the cache: the rows of its first `shards` shards, less the ids its `file` lists as deleted."""

    version: int
    shards: int
    rows: int  # live rows
    corpus_fingerprint: str
    corpus_files: list[str]
    created: str = ""
    added: int = 0  # rows encoded for this version
    removed: int = 0  # rows live in the version before and not in this one
    seen: int = 0  # corpus rows read, duplicates included
    duplicates: int = 0  # corpus rows whose text an earlier row (or the cache) already held
    file: str | None = None  # versions/v00002.safetensors: `deleted` ids, `dup_ids` and `dup_counts`; None: none


@dataclass
class SideTeacher:
    """One side teacher (manifest `teachers[name]`): what made its vectors, its shards (one per main shard, same
    order, rows and ids; names relative to the cache folder) and its files (tokenizer/, token outputs)."""

    folder: str  # teachers/<name>, inside the cache
    teacher: str = ""
    teacher_hash: str = ""
    pooling: list[str] = field(default_factory=list)
    dim: int = 0
    dtype: str = "float32"
    precision: str = "fp32"
    normalize: bool = False
    max_length: int = 0
    columns: dict[str, str] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # relative to the cache folder: sha256, bytes
    complete: bool = False  # covered every shard of the newest version when it was written

    @classmethod
    def from_dict(cls, data: dict, where: str) -> SideTeacher:
        """Parse one `teachers[name]` entry, each field type-checked and each name checked, in one line."""
        check_fields(data, TEACHER_TYPES, where, required=("folder",))
        kwargs = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        kwargs["shards"] = parse_shards(data.get("shards", []), where)
        for rel, record in data.get("files", {}).items():
            check_name(rel, f"{where}: files key")
            check_fields(record, FILE_TYPES, f"{where}: files[{shown(rel)}]", required=("sha256",))
        return cls(**kwargs)


def parse_shards(shards: list, where: str) -> list[ShardInfo]:
    """ShardInfo of each shard entry, each type-checked (one line naming `where` and the entry)."""
    keys = set(ShardInfo.__dataclass_fields__)
    for index, shard in enumerate(shards):
        check_fields(shard, SHARD_TYPES, f"{where}: shards[{index}]", required=("file", "rows", "id_start",
                                                                                 "id_end", "sha256"))
    return [ShardInfo(**{k: v for k, v in s.items() if k in keys}) for s in shards]


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
    versions: list[VersionInfo] = field(default_factory=list)  # oldest first; empty in format-1 caches
    generation: int = 0  # bumped by `tc compact`: the shards it writes are named shard-g<generation>-NNNNN
    # side teachers: name -> their entry (teacher_cache/side_teachers.py); a dict of objects on disk
    teachers: dict[str, SideTeacher] = field(default_factory=dict)

    def identity(self) -> dict:
        """Return the settings that must match for a cache to be resumed or extended."""
        return {k: getattr(self, k) for k in IDENTITY_KEYS}

    def differences(self, other: CacheManifest, ignore: tuple[str, ...] = ()) -> list[str]:
        """Name each identity setting (but those in `ignore`) that differs between two manifests, as
        'key: ours != theirs'."""
        mine, theirs = self.identity(), other.identity()
        return [f"{k}: {theirs[k]!r} != {mine[k]!r}" for k in IDENTITY_KEYS if mine[k] != theirs[k] and k not in ignore]

    def content_fingerprint(self, version: VersionInfo | None = None) -> str:
        """sha256 over every shard (name, rows, checksum) and recorded file: equal only for the same cache content.

        With `version`: over that version's shards and file only (and the files no version owns), so a reader of
        one version is not told the cache changed when a later version is added beside it.
        """
        digest = hashlib.sha256()
        shards = self.shards if version is None else self.shards[:version.shards]
        for s in shards:
            digest.update(f"{s.file}:{s.rows}:{s.id_start}:{s.sha256}\n".encode())
        for name in sorted(self.files):
            if version is not None and name.startswith(VERSIONS_DIR + "/") and name != version.file:
                continue
            digest.update(f"{name}:{self.files[name].get('sha256')}\n".encode())
        if version is not None:
            digest.update(f"v{version.version}:{version.rows}\n".encode())
        return digest.hexdigest()[:32]

    def drop_versions_beyond_shards(self) -> list[int]:
        """Forget the versions that need a shard no longer listed (a resume dropped it); their numbers."""
        gone = [v.version for v in self.versions if v.shards > len(self.shards)]
        self.versions = [v for v in self.versions if v.shards <= len(self.shards)]
        return gone

    def all_versions(self) -> list[VersionInfo]:
        """The versions, oldest first; a complete format-1 cache is one version of all its shards."""
        if self.versions or not self.complete:
            return list(self.versions)
        return [VersionInfo(version=1, shards=len(self.shards), rows=sum(s.rows for s in self.shards),
                            corpus_fingerprint=self.corpus_fingerprint, corpus_files=list(self.corpus_files),
                            created=self.created, added=sum(s.rows for s in self.shards),
                            seen=sum(s.rows for s in self.shards))]

    def find_version(self, number: int | None) -> VersionInfo:
        """Version `number` (None: the newest), or a one-line CacheError naming the versions there are."""
        versions = self.all_versions()
        if not versions:
            raise CacheError("the cache has no finished version yet (an encode is under way or was interrupted); "
                             "rerun the same `tc encode` command to finish it")
        if number is None:
            return versions[-1]
        for v in versions:
            if v.version == number:
                return v
        dropped = f" (versions before {versions[0].version} were dropped by `tc compact`)" if versions[
            0].version > 1 and number < versions[0].version else ""
        raise CacheError(f"--version {number}: no such version{dropped}; the cache has "
                         f"{', '.join(str(v.version) for v in versions)}")

    @property
    def embedding_columns(self) -> list[str]:
        """Column names of the embedding columns, in the order of `pooling`."""
        return [embedding_column(p, i) for i, p in enumerate(self.pooling)]

    def to_dict(self) -> dict:
        """Plain-JSON form of the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = MANIFEST_NAME) -> CacheManifest:
        """Build a manifest from its JSON form, tolerating keys written by newer versions; a wrong type or a name
        that is not a plain relative file name is a one-line CacheError naming `where` and the entry."""
        check_fields(data, MANIFEST_TYPES, where, required=REQUIRED)
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["shards"] = parse_shards(data.get("shards", []), where)
        version_keys = set(VersionInfo.__dataclass_fields__)
        for index, version in enumerate(data.get("versions", [])):
            check_fields(version, VERSION_TYPES, f"{where}: versions[{index}]",
                         required=("version", "shards", "rows", "corpus_fingerprint", "corpus_files"))
        kwargs["versions"] = [VersionInfo(**{k: v for k, v in x.items() if k in version_keys})
                              for x in data.get("versions", [])]
        teachers = {}
        for name, entry in data.get("teachers", {}).items():
            check_name(name, f"{where}: teachers key")
            teachers[name] = SideTeacher.from_dict(entry, f"{where}: teachers[{shown(name)}]")
        kwargs["teachers"] = teachers
        manifest = cls(**kwargs)
        manifest.check_format(where)
        for rel, record in manifest.files.items():
            check_name(rel, f"{where}: files key")
            check_fields(record, FILE_TYPES, f"{where}: files[{shown(rel)}]", required=("sha256",))
        other = manifest.extra.get("other_files")
        if other is not None and not isinstance(other, list):
            raise CacheError(f"{where}: extra.other_files: {a_type(other)}, not a list of names")
        for rel in other or []:
            check_name(rel, f"{where}: extra.other_files entry")
        return manifest

    def check_format(self, where: str) -> None:
        """Refuse, in one line, a cache written by a newer tc (its rows may mean what this one cannot read)."""
        if self.format_version > FORMAT_VERSION:
            raise CacheError(f"{where}: written by a newer teacher-cache (format {self.format_version}; this one "
                             f"reads up to {FORMAT_VERSION}); upgrade teacher-cache to read it")

    def cache_names(self) -> list[tuple[str, str]]:
        """(entry, name) of every name inside the cache folder that this manifest tells tc to read or remove."""
        names = [(f"shards[{i}].file", s.file) for i, s in enumerate(self.shards)]
        names += [("files key", rel) for rel in self.files]
        names += [(key, getattr(self, key)) for key in ("tokenizer_dir", "token_embeddings_file")
                  if getattr(self, key) is not None]
        names += [(f"versions[{i}].file", v.file) for i, v in enumerate(self.versions) if v.file is not None]
        for n, t in self.teachers.items():
            names += [(f"teachers[{shown(n)}].folder", t.folder)]
            names += [(f"teachers[{shown(n)}].shards[{i}].file", s.file) for i, s in enumerate(t.shards)]
            names += [(f"teachers[{shown(n)}].files key", rel) for rel in t.files]
        return names

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
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
            raise CacheError(f"{path}: unreadable manifest ({first_line(exc)})") from None
        if not isinstance(data, dict):
            raise CacheError(f"{path}: malformed manifest (JSON {a_type(data)}, not an object)")
        manifest = cls.from_dict(data, str(path))
        # before anything is read, written or removed: every name must lead to a file inside this folder
        for entry, rel in manifest.cache_names():
            inside(directory, rel, f"{path}: {entry}")
        return manifest


# JSON types of each field (a manifest is data from disk: anything else is refused in one line). `int` means a
# JSON integer in [0, 2**63): a bool, a float or a number numpy cannot hold is refused too.
INT, NAME = "int", "name"
MANIFEST_TYPES = {
    "teacher": str, "teacher_hash": str, "pooling": [str], "max_length": INT, "dim": INT, "dtype": str,
    "normalize": bool, "format": str, "shard_size": INT, "corpus_fingerprint": str, "corpus_files": [str],
    "precision": str, "text_column": (str, None), "columns": {str: str}, "shards": [dict], "complete": bool,
    "rows": INT, "skipped_rows": INT, "tokenizer_dir": (NAME, None), "token_embeddings_file": (NAME, None),
    "kind": str, "files": {str: dict}, "format_version": INT, "created": str, "updated": str, "extra": dict,
    "versions": [dict], "generation": INT, "teachers": {str: dict}}
REQUIRED = ("teacher", "teacher_hash", "pooling", "max_length", "dim", "dtype", "normalize", "format", "shard_size",
            "corpus_fingerprint", "corpus_files")
SHARD_TYPES = {"file": NAME, "rows": INT, "id_start": INT, "id_end": "id_end", "sha256": str, "n_tokens": INT,
               "bytes": INT, "keys": bool}
VERSION_TYPES = {"version": INT, "shards": INT, "rows": INT, "corpus_fingerprint": str, "corpus_files": [str],
                 "created": str, "added": INT, "removed": INT, "seen": INT, "duplicates": INT, "file": (NAME, None)}
TEACHER_TYPES = {"folder": NAME, "teacher": str, "teacher_hash": str, "pooling": [str], "dim": INT, "dtype": str,
                 "precision": str, "normalize": bool, "max_length": INT, "columns": {str: str}, "shards": [dict],
                 "files": {str: dict}, "complete": bool}
FILE_TYPES = {"sha256": str, "bytes": (INT, None)}
INT_LIMIT = 2 ** 63


def type_problem(value: object, kind: object) -> str | None:
    """Why `value` is not of the JSON type `kind` (see MANIFEST_TYPES), or None."""
    if isinstance(kind, tuple):
        problems = [type_problem(value, k) for k in kind]
        return None if None in problems else problems[0]
    if kind is None:
        return None if value is None else "not null"
    if kind in (INT, "id_end"):
        low = -1 if kind == "id_end" else 0  # an empty shard's last id is the one before its first
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{a_type(value)}, not an integer"
        return None if low <= value < INT_LIMIT else f"out of range ({low}..2**63-1)"
    if kind == NAME:
        return name_problem(value)
    if isinstance(kind, list):
        if not isinstance(value, list):
            return f"{a_type(value)}, not a list"
        return next((f"item {i}: {p}" for i, v in enumerate(value) if (p := type_problem(v, kind[0]))), None)
    if isinstance(kind, dict):
        (key_kind, value_kind), = kind.items()
        if not isinstance(value, dict):
            return f"{a_type(value)}, not an object"
        return next((f"{shown(k, 40)}: {p}" for k, v in value.items()
                     if (p := type_problem(k, key_kind) or type_problem(v, value_kind))), None)
    return None if isinstance(value, kind) else f"{a_type(value)}, not a {kind.__name__}"


def check_fields(data: object, types: dict, where: str, required: tuple[str, ...] = ()) -> None:
    """Raise a one-line CacheError naming `where` and the first field of `data` that is missing or of a wrong type."""
    if not isinstance(data, dict):
        raise CacheError(f"{where}: {a_type(data)}, not an object")
    for key in required:
        if key not in data:
            raise CacheError(f"{where}: no {key!r}")
    for key, kind in types.items():
        if key in data:
            problem = type_problem(data[key], kind)
            if problem:  # a list or an object is named by the entry inside it that is wrong, not shown whole
                value = data[key]
                named = f"{key}" if isinstance(value, dict | list) else f"{key} = {shown(value)}"
                raise CacheError(f"{where}: {named}: {problem}")


def embedding_column(pooling: str, index: int) -> str:
    """The first pooling is stored as `embedding`, each further one as `embedding_<pooling>`."""
    return "embedding" if index == 0 else f"embedding_{pooling}"
