"""Shard files: Arrow IPC (file format, memory-mappable) or HDF5, written under a temporary name and renamed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, reason

FORMATS = ("arrow", "hdf5")
SUFFIX = {"arrow": ".arrow", "hdf5": ".h5"}
RECORD_BATCH_ROWS = 8192  # readers can stream a shard batch by batch


def shard_name(index: int, fmt: str, generation: int = 0) -> str:
    """File name of shard `index`: shard-00000.arrow, shard-00001.h5, ...; after `tc compact` (generation g > 0)
    shard-g<g>-00000.arrow, so a compaction never writes over a shard the old manifest still lists."""
    return f"{shard_prefix(generation)}{index:05d}{SUFFIX[fmt]}"


def shard_prefix(generation: int) -> str:
    """The start of every shard name of `generation` (see shard_name)."""
    return "shard-" if generation == 0 else f"shard-g{generation}-"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardRows:
    """The rows of one shard, in id order."""

    ids: np.ndarray  # int64
    texts: list[str]
    vectors: dict[str, np.ndarray]  # column name -> (rows, dim)
    n_tokens: np.ndarray  # int32
    extra: dict[str, np.ndarray] | None = None  # e.g. {"logits": (rows, n_labels)}
    keys: np.ndarray | None = None  # uint64 key of each text (teacher_cache/versions.py); None: no key column


def to_arrow_table(rows: ShardRows, dtype: str) -> pa.Table:
    """Arrow table with id, text, one FixedSizeList column per vector column, n_tokens and (format 2) key."""
    columns = {"id": pa.array(rows.ids, pa.int64()), "text": pa.array(rows.texts, pa.string())}
    for name, matrix in {**rows.vectors, **(rows.extra or {})}.items():
        matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
        flat = pa.array(matrix.reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    columns["n_tokens"] = pa.array(rows.n_tokens, pa.int32())
    if rows.keys is not None:
        columns["key"] = pa.array(np.asarray(rows.keys, dtype=np.uint64), pa.uint64())
    return pa.table(columns)


class ShardWriter:
    """Writes complete shards into a cache folder: temporary file, fsync, rename, then checksum."""

    def __init__(self, directory: Path, fmt: str = "arrow", dtype: str = "float32"):
        """Prepare to write shards of `fmt` ('arrow' or 'hdf5') holding vectors of `dtype`."""
        if fmt not in FORMATS:
            raise CacheError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
        self.directory, self.fmt, self.dtype = Path(directory), fmt, dtype

    def write(self, index: int, rows: ShardRows, generation: int = 0) -> tuple[Path, str]:
        """Write shard `index` (of `generation`, see shard_name) atomically; return its final path and sha256."""
        return self.write_named(shard_name(index, self.fmt, generation), rows)

    def write_named(self, name: str, rows: ShardRows) -> tuple[Path, str]:
        """Write `rows` as `directory/name` (temporary name, fsync, rename); its final path and sha256."""
        final = self.directory / name
        try:
            with atomic_path(final) as tmp:
                if self.fmt == "arrow":
                    self._write_arrow(tmp, rows)
                else:
                    self._write_hdf5(tmp, rows)
                checksum = sha256_file(tmp)
        except OSError as exc:
            raise CacheError(f"{final}: cannot write shard ({reason(exc)}); the partial shard was removed, "
                             "complete shards are kept: free space and rerun to resume") from None
        return final, checksum

    def _write_arrow(self, path: Path, rows: ShardRows) -> None:
        table = to_arrow_table(rows, self.dtype)
        with open(path, "wb") as fh:
            with pa.ipc.new_file(fh, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=RECORD_BATCH_ROWS):
                    writer.write_batch(batch)

    def _write_hdf5(self, path: Path, rows: ShardRows) -> None:
        import h5py

        with h5py.File(path, "w") as h5:
            h5.create_dataset("id", data=rows.ids.astype(np.int64))
            h5.create_dataset("text", data=np.array(rows.texts, dtype=object), dtype=h5py.string_dtype())
            if rows.keys is not None:
                h5.create_dataset("key", data=np.asarray(rows.keys, dtype=np.uint64))
            for name, matrix in {**rows.vectors, **(rows.extra or {})}.items():
                h5.create_dataset(name, data=np.asarray(matrix, dtype=np.dtype(self.dtype)))
            h5.create_dataset("n_tokens", data=rows.n_tokens.astype(np.int32))


def read_arrow_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Memory-map an Arrow shard (zero copy) and return it as a table, optionally only some columns."""
    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    return table.select(columns) if columns else table


def read_hdf5_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read an HDF5 shard into an Arrow table with the same columns an Arrow shard has."""
    import h5py

    with h5py.File(path, "r") as h5:
        names = columns or list(h5.keys())
        data = {}
        for name in names:
            if name not in h5:
                raise CacheError(f"{path}: no column {name!r}")
            values = h5[name][()]
            if name == "text":
                data[name] = pa.array([v.decode() if isinstance(v, bytes) else v for v in values], pa.string())
            elif values.ndim == 2:
                data[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            else:
                data[name] = pa.array(values)
    return pa.table(data)


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read any shard file as an Arrow table."""
    return read_hdf5_shard(path, columns) if path.suffix == ".h5" else read_arrow_shard(path, columns)


def column_widths(path: Path) -> dict[str, int]:
    """Width of each vector column of a shard, from its schema alone (Arrow footer, HDF5 dataset shapes)."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as h5:
            return {name: int(h5[name].shape[1]) for name in h5 if len(h5[name].shape) == 2}
    with pa.memory_map(str(path), "r") as source:  # the footer only: no record batch is read
        schema = pa.ipc.open_file(source).schema
    return {f.name: f.type.list_size for f in schema if pa.types.is_fixed_size_list(f.type)}


def vectors_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """(rows, dim) numpy view of a FixedSizeList column, zero-copy where Arrow allows."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
