"""One storage seam for a cache's files: a local folder, an S3 prefix (s3://bucket/prefix) or, when fsspec is
installed, any fsspec filesystem (memory://, gs://, ...), all through `pyarrow.fs`, with one-line errors naming the URL.

Names inside a store are plain relative POSIX names (teacher_cache.base.safe_paths.check_name). Every `put` is atomic
per object: locally a temporary file, fsync and rename (base/atomic.py); on S3 one upload, which S3 shows whole or not
at all (pyarrow switches to a multipart upload for large objects and completes it on close).

S3 settings come from the standard AWS environment (teacher_cache/s3.py).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from teacher_cache.base.atomic import atomic_path, fsync_file
from teacher_cache.base.errors import UserError, first_line, reason
from teacher_cache.base.safe_paths import check_name
from teacher_cache.s3 import s3_filesystem, s3_problem

COPY_BLOCK = 8 << 20
# a scheme of two or more characters: "C://x" stays a (Windows-like) local path
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(location: str | Path) -> bool:
    """Whether `location` names a store by URL (s3://, file://, memory://, ...) rather than a plain local path."""
    return _URL.match(str(location)) is not None


def fsspec_filesystem(url: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow view of fsspec's filesystem for `scheme` (memory://, gs://, ...) and the URL's path in it."""
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem
    except ImportError:
        raise UserError(f"{url}: unknown storage scheme {scheme}:// (use s3://, file:// or a local path; "
                        "install fsspec for others)") from None
    try:
        fs = fsspec.filesystem(scheme)
        return PyFileSystem(FSSpecHandler(fs)), fs._strip_protocol(url).rstrip("/")  # its own spelling ('/x')
    except ValueError:  # fsspec: "Protocol not known"
        raise UserError(f"{url}: unknown storage scheme {scheme}:// (use s3://, file:// or a local path)") from None
    except ImportError as exc:  # a known protocol whose package is missing (gcsfs, adlfs, ...)
        raise UserError(f"{url}: {scheme}:// needs a package that is not installed ({first_line(exc)})") from None


@dataclass(frozen=True)
class Store:
    """A folder of named objects: `root` inside `fs` (a local path, 'bucket/prefix', ...), shown as `url`."""

    url: str
    fs: pafs.FileSystem
    root: str
    kind: str  # "local", "s3", or the fsspec scheme

    @classmethod
    def open(cls, location: str | Path) -> Store:
        """The store at `location`: s3://bucket/prefix, file:///abs/path, a plain local path, or an fsspec URL."""
        text = str(location)
        if not is_url(text):
            return cls(text, pafs.LocalFileSystem(), str(Path(text).absolute()), "local")
        parsed = urlparse(text)
        scheme = parsed.scheme.lower()
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise UserError(f"{text}: a file:// URL names a local path (file:///abs/path), not host "
                                f"{parsed.netloc!r}")
            return cls(text, pafs.LocalFileSystem(), str(Path(parsed.path or "/").absolute()), "local")
        if scheme == "s3":
            bucket, prefix = parsed.netloc, parsed.path.strip("/")
            if not bucket:
                raise UserError(f"{text}: no bucket (write s3://bucket/prefix)")
            return cls(text, s3_filesystem(), f"{bucket}/{prefix}" if prefix else bucket, "s3")
        return cls(text, *fsspec_filesystem(text, scheme), scheme)

    @property
    def is_local(self) -> bool:
        """Whether the objects are files on this machine (so they can be memory-mapped)."""
        return self.kind == "local"

    @property
    def supports_put_if_absent(self) -> bool:
        """Whether `put_if_absent` is atomic here: locally; pyarrow sends no S3 conditional write (If-None-Match)."""
        return self.is_local

    def where(self, name: str = "") -> str:
        """The URL of `name` in this store, for messages."""
        return f"{self.url.rstrip('/')}/{name}" if name else self.url

    def path(self, name: str) -> str:
        """The filesystem path of `name` (refused unless it is a plain relative name)."""
        check_name(name, f"{self.url}: object", UserError)
        return f"{self.root.rstrip('/')}/{name}"

    def local_path(self, name: str) -> Path:
        """`name` as a local file (local stores only), for memory-mapping."""
        if not self.is_local:
            raise UserError(f"{self.where(name)}: not a local file")
        return Path(self.path(name))

    def error(self, exc: BaseException, name: str, action: str) -> UserError:
        """One line naming the object's URL and why `action` failed."""
        words = s3_problem(exc) if self.kind == "s3" else reason(exc)
        return UserError(f"{self.where(name)}: cannot {action} ({words})")

    def missing(self, name: str = "") -> UserError:
        """The one line for an object (or, with no name, a listing) that is not there: on S3 a missing bucket is
        named as such, since S3 answers 'not found' for both."""
        if self.bucket_missing():
            bucket = self.root.split("/", 1)[0]
            return UserError(f"{self.where(name)}: no such bucket {bucket!r} (create it first, or check the URL)")
        return UserError(f"{self.where(name)}: no such object")

    def bucket_missing(self) -> bool:
        """Whether this is an S3 store whose bucket does not exist (one request; False for other stores)."""
        if self.kind != "s3":
            return False
        try:
            return self.fs.get_file_info(self.root.split("/", 1)[0]).type == pafs.FileType.NotFound
        except OSError as exc:
            raise self.error(exc, "", "look up its bucket") from None

    def _info(self, name: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path(name))
        except OSError as exc:
            raise self.error(exc, name, "look it up") from None

    def exists(self, name: str) -> bool:
        """Whether object `name` exists (a folder of that name does not count)."""
        return self._info(name).type == pafs.FileType.File

    def size(self, name: str) -> int:
        """Bytes in object `name`; a missing one is a UserError."""
        info = self._info(name)
        if info.type != pafs.FileType.File:
            raise self.missing(name)
        return int(info.size)

    def read_bytes(self, name: str) -> bytes:
        """The whole of object `name` (for small ones: a manifest, a config)."""
        path = self.path(name)
        try:
            with self.fs.open_input_stream(path, compression=None) as stream:
                return stream.read()
        except FileNotFoundError:
            raise self.missing(name) from None
        except OSError as exc:
            raise self.error(exc, name, "read it") from None

    def open_input(self, name: str) -> pa.NativeFile:
        """A random-access reader of object `name`, e.g. for `pa.ipc.open_file` (locally a memory map)."""
        return self._open(name, self.fs.open_input_file)

    def open_stream(self, name: str) -> pa.NativeFile:
        """A sequential reader of object `name` (one GET for the whole object on S3): for copying it whole."""
        return self._open(name, lambda path: self.fs.open_input_stream(path, compression=None))

    def _open(self, name: str, open_remote) -> pa.NativeFile:
        """Object `name` opened by `open_remote(path)` (locally a memory map), with one-line errors."""
        path = self.path(name)
        try:
            return pa.memory_map(path, "r") if self.is_local else open_remote(path)
        except FileNotFoundError:
            raise self.missing(name) from None
        except OSError as exc:
            raise self.error(exc, name, "open it") from None

    def sizes(self, pattern: str = "*") -> dict[str, int]:
        """Bytes of each object under the root (recursively) whose name matches the glob `pattern`, by name, in
        name order: one listing (on S3 one LIST request per 1,000 objects, no request per object)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise self.error(exc, "", "list it") from None
        if not infos and self.bucket_missing():  # S3 lists a missing bucket as empty: say so instead
            raise self.missing()
        start = len(self.root.rstrip("/")) + 1
        found = {i.path[start:]: int(i.size) for i in infos if i.type == pafs.FileType.File}
        return {n: found[n] for n in sorted(found) if fnmatch.fnmatchcase(n, pattern)}

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names of the objects under the root (recursively) whose name matches the glob `pattern`."""
        return list(self.sizes(pattern))

    def remove(self, name: str) -> None:
        """Delete object `name`; a missing one is no error."""
        path = self.path(name)
        try:
            if self.is_local:  # a link goes as a link; a folder in its place is left alone
                if os.path.islink(path) or os.path.isfile(path):
                    os.unlink(path)
            else:
                self.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self.error(exc, name, "remove it") from None

    def put(self, name: str, data: bytes | str | Path) -> None:
        """Write `data` (bytes, text, or a local file's Path) as object `name`, atomically per object."""
        path = self.path(name)
        try:
            if self.is_local:
                self._put_local(Path(path), data)
            else:
                self._put_remote(path, name, data)
        except OSError as exc:
            raise self.error(exc, name, "write it") from None

    def _put_local(self, path: Path, data: bytes | str | Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if isinstance(data, Path):
                shutil.copyfile(data, tmp)
            else:
                tmp.write_bytes(data.encode() if isinstance(data, str) else data)

    def _put_remote(self, path: str, name: str, data: bytes | str | Path) -> None:
        stream = self.fs.open_output_stream(path, compression=None)  # bytes as given: never gzip a .gz name again
        if isinstance(data, Path):
            expected = data.stat().st_size
            with open(data, "rb") as fh:
                for block in iter(lambda: fh.read(COPY_BLOCK), b""):
                    stream.write(block)
        else:
            payload = data.encode() if isinstance(data, str) else data
            expected = len(payload)
            stream.write(payload)
        stream.close()  # completes the upload: only now does the object appear, whole
        # pyarrow exposes no abort, so a stream dropped after an error may still complete a short object: this
        # check catches a short upload that "succeeded"; the manifest's sizes and sha256s catch the rest
        if self.size(name) != expected:
            self.remove(name)
            raise UserError(f"{self.where(name)}: upload incomplete; the object was removed")

    def put_if_absent(self, name: str, data: bytes | str) -> bool:
        """Write object `name` only if none exists: True when written, False when one was there (a claim or lock).

        Atomic locally (a hard link of a complete temporary file, which fails when the name is taken). pyarrow sends
        no S3 conditional write (If-None-Match: *), so elsewhere this is refused rather than done with a race.
        """
        if not self.supports_put_if_absent:
            raise UserError(f"{self.where(name)}: {self.kind}:// stores cannot create an object only-if-absent "
                            "through pyarrow (no S3 conditional writes); locks are local only")
        final = Path(self.path(name))
        payload = data.encode() if isinstance(data, str) else data
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f"{final.name}.{os.getpid()}.claim")
            tmp.write_bytes(payload)
            fsync_file(tmp)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise self.error(exc, name, "write it") from None
        return True


def store_for(location: str | Path) -> Store:
    """The Store at `location` (s3://bucket/prefix, file:///path, a local path, or an fsspec URL)."""
    return Store.open(location)
