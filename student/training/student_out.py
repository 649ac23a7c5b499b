"""Where a training run writes its student (--out): a local folder, exactly as student/training/checkpoint.py has
always done, or a store URL (s3://bucket/prefix).

A URL is written through a local staging folder (user cache dir / staging-students / a hash of the URL): every file
is written there first, then *published* object by object at each save point (Store.put is atomic per object): a
checkpoint as checkpoint/checkpoint.pt then checkpoint/trainer_state.json; the finished student as its model files,
then training_args.json, and config.json last, so a reader of the store never sees a half student (Student loading
starts from config.json). Once config.json is up, the checkpoint objects go. --resume first downloads the remote
checkpoint into staging.

The --out rules for a URL are the folder's, said with the URL: a prefix holding other objects is refused without
--force; one holding an earlier run says --resume or --force; --force removes only a student's own names there,
and only at the new run's first save (config.json first, so no reader sees a student being taken apart). The lock
is local (on the staging folder): pyarrow sends no S3 conditional write, so two machines training into one prefix
are not stopped. The staging folder, publishing and the one-line rules are teacher_cache/remote_out.py's, shared
with tc export --out and tc probe --report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from student.config import CONFIG_NAME
from student.training.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    check_output,
    clear_output,
    earlier_run,
    hold_output,
    remove_checkpoint,
    training_out,
)
from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import UserError
from teacher_cache.base.safe_paths import real_folder
from teacher_cache.remote_out import RemoteOut, local_folder, staging_dir, url_overlap
from teacher_cache.storage import Store, is_url

TRAINER_STATE = "trainer_state.json"
# the checkpoint's objects, in the order they are uploaded (the state file describes the checkpoint: after it)
CHECKPOINT_OBJECTS = (f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", f"{CHECKPOINT_DIR}/{TRAINER_STATE}")
FINISHED_MARK = "training_args.json"  # what says a finished run (checkpoint.py check_output): next to last


STAGING_KIND = "staging-students"  # user cache dir / this / a hash of the URL (teacher_cache/remote_out.py)


def student_staging_dir(url: str) -> Path:
    """The local folder where the files of the remote student at `url` are written before they are uploaded."""
    return staging_dir(STAGING_KIND, url)


@dataclass
class StudentOut:
    """The --out of a training run: `folder` is where its files are written (--out itself, or a URL's staging
    folder); `store` is the URL's store (None for a local folder)."""

    location: str
    shards: str | None
    folder: Path
    out: RemoteOut | None = None  # the URL's staging folder, publishing and rules (None for a local folder)

    @classmethod
    def open(cls, out: str | Path, shards: str | Path | None = None) -> StudentOut:
        """The --out `out` (a folder or a store URL) of a run reading the cache `shards`."""
        text, cache = str(out), None if shards is None else str(shards)
        remote = RemoteOut.open(text, "--out", STAGING_KIND)
        if remote is None:  # a folder, or file:///path: a local folder all the same
            return cls(text, cache, local_folder(out))
        return cls(text, cache, remote.folder, remote)

    @property
    def store(self) -> Store | None:
        """The URL's store (None for a local folder)."""
        return None if self.out is None else self.out.store

    @property
    def remote(self) -> bool:
        """Whether --out is in an object store (written through staging)."""
        return self.out is not None

    def where(self, rel: str = "") -> str:
        """--out (its URL, or its folder) or a name in it, for messages."""
        if self.out is not None:
            return self.out.where(rel)
        given = str(self.folder) if is_url(self.location) else self.location  # a folder: as the user wrote it
        return str(Path(given) / rel) if rel else given

    def _error(self, words: str) -> UserError:
        return UserError(f"--out {self.location}: {words}")

    # ---- the rules ---------------------------------------------------------------------------------------------

    def check(self, resume: bool, force: bool) -> None:
        """Refuse an --out that would lose something (checkpoint.py check_output's rules; for a URL, in its words)."""
        if self.out is None:
            check_output(self.folder, self.shards, resume, force)
            return
        if resume and force:
            raise UserError("--resume and --force: choose one (--force starts over, --resume continues)")
        if self.shards is not None and is_url(self.shards) and url_overlap(self.location, self.shards):
            raise self._error(f"overlaps the cache {self.shards}; choose another prefix")
        names = self.remote_names()
        has_checkpoint = CHECKPOINT_OBJECTS[0] in names
        if resume:
            if not has_checkpoint and FINISHED_MARK in names:
                raise UserError(f"--resume: {self.location} holds a finished student and no checkpoint; nothing "
                                "to resume (pass --force without --resume to train again)")
            if not has_checkpoint:
                raise UserError(f"--resume: no checkpoint in {self.where(CHECKPOINT_DIR)}; start without --resume")
            return
        # what a failed first checkpoint left counts for nothing (as locally): nothing to resume, nothing to keep
        present = names if has_checkpoint else [n for n in names if n.split("/")[0] != CHECKPOINT_DIR]
        if present and not force:
            said = earlier_run(sorted({n.split("/")[0] for n in present}))
            raise self._error(said) if said else self.out.not_empty(present, "a student's files")

    def remote_names(self) -> list[str]:
        """The objects under the URL (names a store could not hold as files left out)."""
        assert self.out is not None
        return self.out.names()

    @contextmanager
    def hold(self, command: str = "tc train-student") -> Iterator[None]:
        """Lock --out for one run (rank 0 alone); for a URL, its staging folder, emptied of an earlier run's files
        (it is a scratch copy: the store is what holds the student)."""
        if self.out is None:
            with hold_output(self.folder, self.shards, command):
                yield
            return
        if os.environ.get("RANK", "0") != "0":  # the other ranks never write into --out
            yield
            return
        with self.out.hold(command):
            training_out(self.folder).clear_own()
            yield

    # ---- the save points ---------------------------------------------------------------------------------------

    def fetch_checkpoint(self) -> None:
        """--resume from a URL: download its checkpoint into staging (a local --out holds it already)."""
        if self.store is None:
            return
        real_folder(self.folder / CHECKPOINT_DIR)
        for name in CHECKPOINT_OBJECTS:
            if not self.store.exists(name):
                continue  # trainer_state.json is a summary: a checkpoint resumes without it
            with atomic_path(self.folder / name) as tmp:
                tmp.write_bytes(self.store.read_bytes(name))

    def replace_earlier(self) -> None:
        """--force, just before the new run's first save: remove the earlier run's own files (and nothing else);
        in a store config.json goes first, so that no reader finds a student being taken apart."""
        if self.out is None:
            clear_output(self.folder)
            return
        own = training_out(self.folder)
        self.out.remove([n for n in self.remote_names() if own.is_own(n)], first=(CONFIG_NAME,))

    def publish_checkpoint(self) -> None:
        """Upload the checkpoint just saved in staging (the weights first, then the summary that names them)."""
        if self.store is None:
            return
        for name in CHECKPOINT_OBJECTS:
            if (self.folder / name).is_file():
                self.store.put(name, self.folder / name)

    def publish_student(self) -> None:
        """Upload the finished student from staging: its model files, then training_args.json, config.json last;
        then drop the checkpoint (in the store, then locally) and the staging copy."""
        if self.out is None:
            remove_checkpoint(self.folder)
            return
        own = training_out(self.folder)
        files = [rel for rel in self.out.staged_files() if own.is_own(rel) and rel.split("/")[0] != CHECKPOINT_DIR]
        self.out.publish(files, last=(FINISHED_MARK, CONFIG_NAME))
        for name in CHECKPOINT_OBJECTS:
            self.store.remove(name)
        own.clear_own()  # the student is in the store now; the scratch copy would only take disk
