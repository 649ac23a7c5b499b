"""Side teachers of a cache (teachers/<name>/): their names, their shards aligned one to one with the main shards
(same base name, same ids, no text), the checks `tc verify` runs on them, and their vectors for one shard's rows.

The main manifest.json is their one commit point: each entry (manifest.SideTeacher) lists the side shards and files
by names relative to the cache folder, checked by CacheManifest.load to stay inside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.errors import CacheError, CacheIntegrityError, first_line
from teacher_cache.cache_files import file_problem
from teacher_cache.manifest import TEACHERS_DIR, CacheManifest, ShardInfo, SideTeacher
from teacher_cache.shards import ShardRows, ShardWriter, column_widths, read_shard, vectors_of

# The side teacher's own outputs for each token of the MAIN teacher's vocabulary (vocab_main x dim): a static student
# (which uses the main tokenizer) starts from them when it learns this teacher's vectors.
MAIN_VOCAB_OUTPUTS_FILE = "main_vocab_outputs.safetensors"
MAIN_VOCAB_OUTPUTS_KEY = "main_vocab_outputs"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def teacher_slug(teacher: str) -> str:
    """A teacher's name for --teacher-column/--targets: the last part of its name or path ('model': the folder
    above it), other characters than letters, digits, '.', '_' and '-' made '-'."""
    parts = [p for p in re.split(r"[/\\]+", str(teacher)) if p]
    name = parts[-1] if parts else "teacher"
    if name == "model" and len(parts) > 1:
        name = parts[-2]
    return _UNSAFE.sub("-", name).strip(".-")[:100] or "teacher"


def main_name(manifest: CacheManifest) -> str:
    """The main teacher's name (see teacher_slug)."""
    return teacher_slug(manifest.teacher)


def side_folder(name: str) -> str:
    """The folder of side teacher `name`, relative to the cache: teachers/<name>."""
    return f"{TEACHERS_DIR}/{name}"


def side_shard_name(entry: SideTeacher, main_file: str) -> str:
    """The side shard aligned with main shard `main_file`: <folder>/<its base name>, relative to the cache."""
    return f"{entry.folder}/{Path(main_file).name}"


def aligned(entry: SideTeacher, side: ShardInfo, main: ShardInfo) -> bool:
    """Whether side shard `side` is the one aligned with main shard `main` (name, rows, ids)."""
    return (side.file == side_shard_name(entry, main.file) and side.rows == main.rows
            and side.id_start == main.id_start and side.id_end == main.id_end)


def covered(entry: SideTeacher, shards: list[ShardInfo]) -> int:
    """How many of the main `shards`, from the first, the side teacher has an aligned shard for."""
    count = 0
    for side, main in zip(entry.shards, shards, strict=False):
        if not aligned(entry, side, main):
            break
        count += 1
    return count


class SideShardWriter(ShardWriter):
    """Writes side shards: id, the vector columns, n_tokens (no text, no key), under a given name, atomically."""

    def _write_arrow(self, path: Path, rows: ShardRows) -> None:
        columns = {"id": pa.array(rows.ids, pa.int64())}
        for column, matrix in rows.vectors.items():
            matrix = np.ascontiguousarray(matrix, dtype=np.dtype(self.dtype))
            columns[column] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
        columns["n_tokens"] = pa.array(rows.n_tokens, pa.int32())
        table = pa.table(columns)
        with open(path, "wb") as fh, pa.ipc.new_file(fh, table.schema) as writer:
            writer.write_table(table)

    def _write_hdf5(self, path: Path, rows: ShardRows) -> None:
        import h5py

        with h5py.File(path, "w") as h5:
            h5.create_dataset("id", data=rows.ids.astype(np.int64))
            for column, matrix in rows.vectors.items():
                h5.create_dataset(column, data=np.asarray(matrix, dtype=np.dtype(self.dtype)))
            h5.create_dataset("n_tokens", data=rows.n_tokens.astype(np.int32))


def side_shard_problem(directory: Path, entry: SideTeacher, info: ShardInfo) -> str | None:
    """What is wrong with one side shard file (missing, size, checksum, ids, widths), or None."""
    problem = file_problem(directory, info.file, {"sha256": info.sha256, "bytes": info.bytes or None})
    if problem:
        return problem
    path = directory / info.file
    try:
        ids = read_shard(path, ["id"]).column("id").to_numpy()
        widths = column_widths(path)
    except Exception as exc:  # a matching checksum but an unparsable file: a writer bug
        return f"{path}: unreadable ({first_line(exc)})"
    for column in entry.columns:
        if widths.get(column) != entry.dim:
            return f"{path}: column {column!r} is {widths.get(column)} wide, the manifest says dim {entry.dim}"
    problems = info.id_problems(str(path), ids)
    return problems[0] if problems else None


def side_problems(directory: Path, manifest: CacheManifest) -> list[str]:
    """Every problem of every side teacher of a local cache: its shards (file, ids, widths, alignment with the main
    shards) and its recorded files."""
    problems = []
    for name, entry in manifest.teachers.items():
        for index, info in enumerate(entry.shards):
            main = manifest.shards[index] if index < len(manifest.shards) else None
            if main is None or not aligned(entry, info, main):
                problems.append(f"{directory / info.file}: side teacher {name}'s shard {index} is not aligned with "
                                f"main shard {main.file if main else index} (rerun `tc encode --teacher "
                                f"{entry.teacher} --out {directory}`)")
                continue
            problem = side_shard_problem(directory, entry, info)
            if problem:
                problems.append(problem)
        for rel, record in entry.files.items():
            problem = file_problem(directory, rel, record)
            if problem:
                problems.append(problem)
    return problems


def side_column(entry: SideTeacher, name: str, column: str | None) -> str:
    """Side teacher `name`'s stored column for a pooling or column name (None: its first), else a one-line error."""
    columns = list(entry.columns)
    if not columns:
        raise CacheError(f"side teacher {name}: holds no vector column")
    if column is None or column in columns:
        return columns[0] if column is None else column
    for stored, pooling in entry.columns.items():
        if pooling == column:
            return stored
    raise CacheError(f"--target-column {column}: side teacher {name} holds "
                     f"{', '.join(f'{c} ({p})' for c, p in entry.columns.items())}")


def read_side_vectors(directory: Path, entry: SideTeacher, name: str, main: ShardInfo, index: int,
                      column: str, location: str) -> np.ndarray:
    """Side teacher `name`'s vectors of main shard `index` (`main`), in row order, as stored; its ids must be the
    main shard's; a side teacher that does not cover the shard is a one-line CacheError saying how to add it."""
    side = entry.shards[index] if index < len(entry.shards) else None
    if side is None or not aligned(entry, side, main):
        raise CacheError(f"{location}: side teacher {name} does not cover shard {main.file} (the cache has a newer "
                         f"version); run `tc encode --teacher {entry.teacher} --out {location}` to add it")
    path = directory / side.file
    try:
        table = read_shard(path, ["id", column])
    except Exception as exc:  # missing, torn, foreign
        raise CacheIntegrityError(f"{path}: unreadable side shard ({first_line(exc)}); run `tc verify`") from None
    ids = table.column("id").to_numpy()
    if len(ids) != main.rows or (len(ids) and (ids[0] != main.id_start or ids[-1] != main.id_end
                                               or np.any(np.diff(ids) != 1))):
        raise CacheIntegrityError(f"{path}: ids are not those of {main.file} ({main.id_start}..{main.id_end}); run "
                                  "`tc verify`")
    return vectors_of(table, column)


def read_main_vocab_outputs(directory: Path, entry: SideTeacher, name: str) -> np.ndarray:
    """Side teacher `name`'s outputs over the main vocabulary (vocab_main x dim, float32), or a one-line error."""
    from safetensors.numpy import load_file

    path = directory / entry.folder / MAIN_VOCAB_OUTPUTS_FILE
    if f"{entry.folder}/{MAIN_VOCAB_OUTPUTS_FILE}" not in entry.files:
        raise CacheError(f"{path}: side teacher {name} carries no outputs over the main vocabulary; rerun `tc encode "
                         f"--teacher {entry.teacher} --out {directory}`")
    try:
        matrix = load_file(str(path))[MAIN_VOCAB_OUTPUTS_KEY]
    except Exception as exc:  # truncated or foreign: one line naming it
        raise CacheIntegrityError(f"{path}: unreadable ({first_line(exc)}); run `tc verify`") from None
    if matrix.ndim != 2 or matrix.shape[1] != entry.dim:
        raise CacheIntegrityError(f"{path}: shape {matrix.shape}, side teacher {name} is {entry.dim} wide")
    return matrix.astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float32; an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SideTeacherReads:
    """What TeacherCache reads of several teachers: their names, entries, widths, and one shard's targets (it
    relies on TeacherCache's manifest, location, directory, shards, vector_column, read_shard, token_outputs)."""

    manifest: CacheManifest
    location: str
    remote: bool
    directory: Path

    def teacher_names(self) -> list[str]:
        """The teachers whose vectors the cache holds: the main one first, then each side teacher."""
        return [main_name(self.manifest), *self.manifest.teachers]

    def side_teacher(self, name: str) -> SideTeacher:
        """Side teacher `name`'s entry, once it covers every shard of the version read; else one line."""
        entry = self.manifest.teachers.get(name)
        if entry is None:
            raise CacheError(f"{self.location}: no teacher {name!r}; it holds {', '.join(self.teacher_names())}")
        if self.remote:
            raise CacheError(f"{self.location}: side teacher {name}: side teachers are read from local caches only "
                             "(copy the cache to a folder first)")
        done = covered(entry, self.shards)
        if done < len(self.shards):
            raise CacheError(f"{self.location}: side teacher {name} covers {done} of the {len(self.shards)} shards "
                             f"of this version (the main teacher added rows since); run `tc encode --teacher "
                             f"{entry.teacher} --out {self.location}` to add them")
        return entry

    def teacher_dim(self, name: str) -> int:
        """Width of teacher `name`'s vectors."""
        return self.manifest.dim if name == main_name(self.manifest) else self.side_teacher(name).dim

    def target_dim(self, names: list[str]) -> int:
        """Width of read_targets(..., names): the named teachers' widths summed."""
        return sum(self.teacher_dim(n) for n in names)

    def teacher_info(self, name: str, column: str | None = None) -> dict:
        """What a student records of one teacher it learnt: name, weights hash, dim, column, pooling, normalized."""
        if name == main_name(self.manifest):
            m, col = self.manifest, self.vector_column(column)
            return {"name": name, "teacher": m.teacher, "hash": m.teacher_hash, "dim": m.dim, "column": col,
                    "pooling": m.columns.get(col), "normalized": m.normalize}
        entry = self.side_teacher(name)
        col = side_column(entry, name, column)
        return {"name": name, "teacher": entry.teacher, "hash": entry.teacher_hash, "dim": entry.dim, "column": col,
                "pooling": entry.columns.get(col), "normalized": entry.normalize}

    def tokenizer_differs(self, name: str) -> bool:
        """Whether side teacher `name`'s tokenizer (tokenizer.json) is not the main teacher's."""
        entry = self.side_teacher(name)
        mine = self.manifest.files.get(f"{self.manifest.tokenizer_dir or 'tokenizer'}/tokenizer.json", {})
        theirs = entry.files.get(f"{entry.folder}/tokenizer/tokenizer.json", {})
        return mine.get("sha256") != theirs.get("sha256")

    def read_targets(self, index: int, names: list[str], column: str | None = None) -> np.ndarray:
        """float32 (rows, dim) targets of shard `index`'s rows, in row order: one teacher's vectors as stored, or
        the concatenation of each named teacher's L2-normalised vectors (the main teacher's from the main shard, a
        side teacher's from its aligned side shard); `column` a pooling or column name (None: each one's first)."""
        main, parts = main_name(self.manifest), []
        for name in names:
            if name == main:
                col = self.vector_column(column)
                parts.append(vectors_of(self.read_shard(index, [col]), col))
            else:
                entry = self.side_teacher(name)
                parts.append(read_side_vectors(self.directory, entry, name, self.shards[index], index,
                                               side_column(entry, name, column), self.location))
        if len(parts) == 1:
            return np.array(parts[0], dtype=np.float32)
        return np.concatenate([unit_rows(p) for p in parts], axis=1)

    def vocab_outputs(self, name: str) -> np.ndarray | None:
        """Teacher `name`'s output for each token of the main vocabulary (vocab x dim, float32): the main
        teacher's token outputs (None when not cached), a side teacher's main_vocab_outputs."""
        if name == main_name(self.manifest):
            return self.token_outputs()
        return read_main_vocab_outputs(self.directory, self.side_teacher(name), name)
