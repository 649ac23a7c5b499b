"""Checking a teacher cache file by file: TeacherCache's verify (every shard's checksum, rows, contiguous ids and
widths; the other files' checksums; side teachers), the remote variant (every object read once), and the checks
that training runs before it writes anything."""

from __future__ import annotations

from teacher_cache.base.errors import CacheIntegrityError
from teacher_cache.cache_files import file_problem
from teacher_cache.remote_reader import check_object_sizes, verify_objects
from teacher_cache.shards import read_shard, sha256_file
from teacher_cache.side_teachers import side_problems


class CacheChecks:
    """The checks of an opened TeacherCache (mixed into it): uses its manifest, directory, remote, store,
    view_problem, width_problem and local_files."""

    def verify(self, below_id: int | None = None) -> list[str]:
        """Re-check every file (shards: checksum, rows, contiguous ids; the others: checksum); list the problems.
        `below_id`: read only the shards holding ids below it (a run on the first N rows reads no other)."""
        if self.remote:
            return self.verify_remote()
        problems: list[str] = []
        expected_start = 0
        for index, info in enumerate(self.manifest.shards):
            path = self.directory / info.file
            if info.id_start != expected_start:
                problems.append(f"{path}: ids start at {info.id_start}, expected {expected_start}")
            expected_start = info.id_end + 1
            if below_id is not None and info.id_start >= below_id:
                continue
            if not path.is_file():  # a folder named as a shard is no shard either
                problems.append(f"{path}: missing")
                continue
            if info.bytes and path.stat().st_size != info.bytes:
                problems.append(f"{path}: {path.stat().st_size:,} bytes, the manifest says {info.bytes:,} "
                                "(truncated or changed)")
                continue
            if sha256_file(path) != info.sha256:
                problems.append(f"{path}: checksum mismatch (the file changed after it was written)")
                continue
            try:
                ids = read_shard(path, ["id"]).column("id").to_numpy()
                width = self.width_problem(index)
            except Exception as exc:  # a readable checksum but unparsable file means a writer bug
                problems.append(f"{path}: unreadable ({exc})")
                continue
            problems += [width] if width else []
            problems += info.id_problems(path, ids)
        for rel, record in self.manifest.files.items():
            problem = file_problem(self.directory, rel, record)
            if problem:
                problems.append(problem)
        if self.view_problem and not any(self.view_problem.split(":")[0] in p for p in problems):
            problems.append(self.view_problem)
        return problems + side_problems(self.directory, self.manifest)

    def verify_remote(self) -> list[str]:
        """`verify` for a cache in a store: every object read once (one shard on local disk at a time)."""
        return verify_objects(self)

    def check_before_use(self, below_id: int | None = None) -> None:
        """What training checks before it writes anything: a local cache whole (`check`), or with `below_id` the
        shards that hold those ids (--max-rows); a remote one by its objects' sizes and its small files' checksums
        (each shard's sha256 is checked when it arrives), so a remote cache is not read twice."""
        if not self.remote:
            self.check(below_id)
            return
        check_object_sizes(self.store, self.manifest)
        self.local_files()

    def check(self, below_id: int | None = None) -> None:
        """Raise a one-line CacheIntegrityError naming the first bad shard (of those below `below_id`), if any."""
        problems = self.verify(below_id)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CacheIntegrityError(problems[0] + more)
