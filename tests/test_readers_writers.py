"""Readers and writers of one cache: a reader refuses a cache a writer holds and training stops when the cache changes
under it; the corpus fingerprint sees every byte (older caches still resume); a FIFO corpus is refused at once; the
manifest's dim is checked against the shards before --force clears an old student."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from student.training.data import StreamingCacheDataset
from teacher_cache import open_cache
from teacher_cache.base.errors import CacheError, CacheIntegrityError
from teacher_cache.base.lock import FolderLock
from teacher_cache.manifest import CacheManifest
from tests.conftest import SAMPLE
from tests.helpers import one_line, run_cli
from tests.test_locks_and_force import checkpoint_step

TRAIN = ["--arch", "bilstm", "--init-embeddings", "teacher", "--loss", "mse", "--emb-dim", "16", "--hidden", "16",
         "--batch-size", "16", "--lr", "0.01", "--val-rows", "30", "--checkpoint-every", "0", "--quiet"]
STEPS_PER_EPOCH = 17  # 270 training rows in batches of 16


def encode_args(teacher_dir, corpus, out, *extra):
    """The tiny_cache fixture's settings as `tc encode` flags."""
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir), "--max-length", "64",
            "--precision", "fp32", "--pooling", "mean,cls", "--shard-size", "100", "--quiet", *extra]


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture
def copy(tiny_cache, tmp_path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(tiny_cache, folder)
    return folder


# ---- a reader refuses a cache its writer holds ------------------------------------------------------------------


def test_train_student_is_refused_while_a_writer_holds_the_cache(copy, tmp_path, capsys):
    out = tmp_path / "s"
    with FolderLock(copy, "tc encode"):  # `tc encode --force` rewriting it now
        code, _, err = run_cli(capsys, "train-student", "--shards", copy, "--out", out, *TRAIN)
        one_line(code, err, f"{copy}: the cache is being written again", f"pid {os.getpid()}", "tc encode")
        with pytest.raises(CacheError, match="being written again"):
            open_cache(copy)
    assert not out.exists()  # refused before anything was written


def change_shard_record(folder: Path) -> None:
    manifest = CacheManifest.load(folder)
    manifest.shards[0].sha256 = hashlib.sha256(b"a new shard 0").hexdigest()
    manifest.save(folder)


@pytest.mark.parametrize("change,needle", [("manifest", "the cache was rewritten"),
                                           ("lock", "a writer took the cache")])
def test_training_stops_when_the_cache_changes_between_epochs(copy, tmp_path, capsys, monkeypatch, change, needle):
    out, locks = tmp_path / "s", []
    set_epoch = StreamingCacheDataset.set_epoch

    def rewrite_before_the_second_epoch(self, epoch, skip_batches=0):
        if epoch == 1 and change == "manifest":
            change_shard_record(copy)  # a writer came and went while epoch 1 was checkpointed
        elif epoch == 1:
            locks.append(FolderLock(copy, "tc encode").acquire())  # a writer holds it now
        set_epoch(self, epoch, skip_batches)

    monkeypatch.setattr(StreamingCacheDataset, "set_epoch", rewrite_before_the_second_epoch)
    try:
        code, _, err = run_cli(capsys, "train-student", "--shards", copy, "--out", out, *TRAIN, "--epochs", "2")
    finally:
        for lock in locks:
            lock.release()
    one_line(code, err, needle, f"stopped at step {2 * STEPS_PER_EPOCH}", "--force")
    assert checkpoint_step(out) == STEPS_PER_EPOCH  # the first epoch's checkpoint stays; the mixed one never came
    assert not (out / "model.safetensors").exists()


# ---- the corpus fingerprint sees every byte ---------------------------------------------------------------------


def test_a_same_size_edit_in_the_middle_of_a_big_corpus_is_seen(tmp_path, teacher_dir, capsys):
    corpus, out = tmp_path / "big.txt", tmp_path / "out"
    lines = SAMPLE.read_text().splitlines()
    text = "\n".join(lines * (3 * 2**20 // len("\n".join(lines)) + 1)) + "\n"
    corpus.write_text(text)
    assert corpus.stat().st_size > 2 * 2**20 + 2**20  # the middle is read by neither end's MiB
    assert run_cli(capsys, *encode_args(teacher_dir, corpus, out, "--max-rows", "100"))[0] == 0
    assert run_cli(capsys, "verify", out)[0] == 0
    data = bytearray(corpus.read_bytes())
    middle = data.index(b"e", len(data) // 2)
    data[middle:middle + 1] = b"a"  # one letter of one sentence: same size
    corpus.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", out)
    one_line(code, err, f"corpus {corpus}: changed since the cache was encoded")
    changed = data[:middle].count(b"\n") < 100  # the edited line among the first 100 rows (it is not: kept)
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus, out, "--max-rows", "200"))  # grow
    assert code == 0, err
    version = open_cache(out).version
    assert (version.version, version.added, version.removed, changed) == (2, 100, 0, False)


def old_fingerprint(files: list[Path], text_column=None) -> str:
    """The fingerprint caches were made with before it read every byte (a copy of that code, not an import)."""
    digest = hashlib.sha256()
    digest.update(repr(text_column).encode())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                digest.update(fh.read())
    return digest.hexdigest()[:32]


def test_a_cache_with_an_old_fingerprint_still_resumes_by_content(copy, teacher_dir, corpus_file, capsys):
    manifest = json.loads((copy / "manifest.json").read_text())
    old = old_fingerprint([corpus_file])
    shards = [{k: v for k, v in s.items() if k != "keys"} for s in manifest["shards"]]  # format 1: keys from texts
    edit_manifest(copy, corpus_fingerprint=old, complete=True, shards=shards, versions=[], format_version=1)
    code, out, err = run_cli(capsys, "verify", copy)  # a complete old cache: verified on its own kind
    assert code == 0 and "still matches the cache's fingerprint (an older kind" in out, err
    edit_manifest(copy, complete=False, shards=shards[:2])  # interrupted
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, copy))  # resumes: the last shard again
    assert code == 0, err
    cache = open_cache(copy)
    assert cache.manifest.complete and len(cache) == 300 and cache.version.added == 300
    assert cache.manifest.corpus_fingerprint.startswith("v2:")  # the new version records a hash of every byte


def test_verify_notes_a_corpus_that_is_gone(copy, tmp_path, capsys):
    edit_manifest(copy, corpus_files=[str(tmp_path / "moved.txt")])
    code, out, err = run_cli(capsys, "verify", copy)
    assert code == 0 and out.startswith("ok:") and "note: corpus" in err and "not re-hashed" in err


class Hung(BaseException):
    """Raised by the watchdog: `tc encode` blocked on the FIFO."""


@pytest.mark.parametrize("glob", [False, True])
def test_a_fifo_corpus_is_refused_at_once(tmp_path, teacher_dir, capsys, glob):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever

    def hung(signum, frame):
        raise Hung("tc encode blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        code, _, err = run_cli(capsys, *encode_args(teacher_dir, tmp_path / "*.fifo" if glob else fifo,
                                                    tmp_path / "out"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    one_line(code, err, str(fifo), "is a named pipe (FIFO), not a regular file")
    assert not (tmp_path / "out").exists()


# ---- the manifest's dim against the shards ----------------------------------------------------------------------


@pytest.fixture(params=["arrow", "hdf5"])
def cache_of_format(request, copy, tmp_path, teacher_dir, corpus_file, capsys) -> Path:
    if request.param == "arrow":
        return copy
    out = tmp_path / "h5"
    assert run_cli(capsys, *encode_args(teacher_dir, corpus_file, out, "--format", "hdf5", "--max-rows", "200"))[0] == 0
    return out


def test_a_manifest_dim_the_shards_do_not_have_is_refused(cache_of_format, capsys):
    edit_manifest(cache_of_format, dim=10**12)
    shard = "shard-00000.h5" if (cache_of_format / "shard-00000.h5").exists() else "shard-00000.arrow"
    needles = (shard, "column 'embedding' holds vectors of width 32", f"dim {10**12}")
    code, _, err = run_cli(capsys, "verify", cache_of_format)
    one_line(code, err, *needles)
    with pytest.raises(CacheIntegrityError, match=rf"{shard}: column 'embedding' holds vectors of width 32"):
        open_cache(cache_of_format)


def test_a_manifest_column_the_shards_do_not_have_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    edit_manifest(copy, columns=manifest["columns"] | {"embedding_max": "max"})
    with pytest.raises(CacheIntegrityError, match="shard-00000.arrow: no vector column 'embedding_max'"):
        open_cache(copy)


def test_train_student_force_on_a_bad_dim_cache_keeps_the_old_student(copy, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    old = {"training_args.json": b"{}\n", "model.safetensors": b"the old student", "config.json": b"{}\n"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    edit_manifest(copy, dim=64)  # wrong, yet small enough to build a student and start training
    code, _, err = run_cli(capsys, "train-student", "--shards", copy, "--out", out, *TRAIN, "--force")
    one_line(code, err, "shard-00000.arrow", "width 32", "dim 64")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old
