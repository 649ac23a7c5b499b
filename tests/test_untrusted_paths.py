"""A cache is data, never instructions (issue #21): names in a manifest never reach outside the cache folder, and
nothing tc writes goes through a link planted in a folder it writes to.

Each test keeps a victim file (or folder) OUTSIDE the cache folder and checks its bytes stay the same.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from teacher_cache import open_cache
from teacher_cache.base.atomic import atomic_path, atomic_write
from teacher_cache.base.errors import CacheError
from teacher_cache.base.lock import LOCK_NAME, FolderLock
from tests.helpers import one_line, run_cli, shard_digests

VICTIM = b"the user's own file: must never change\n"


def encode_args(teacher_dir, corpus, out, *extra):
    """The settings of the tiny_cache fixture (a rerun into a copy of it is a resume)."""
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir), "--max-length", "64",
            "--precision", "fp32", "--pooling", "mean,cls", "--shard-size", "100", *extra]


@pytest.fixture
def root(tmp_path) -> Path:
    """A scratch root holding victim.txt and d/x (the user's files) beside where the cache goes."""
    folder = tmp_path / "root"
    (folder / "d").mkdir(parents=True)
    (folder / "victim.txt").write_bytes(VICTIM)
    (folder / "d" / "x").write_bytes(VICTIM)
    return folder


@pytest.fixture
def cache(tiny_cache, root) -> Path:
    """A private copy of the complete tiny cache at root/cache, with a file of the user's in it."""
    dest = root / "cache"
    shutil.copytree(tiny_cache, dest)
    (dest / "notes.txt").write_bytes(VICTIM)
    return dest


def victims_intact(root: Path, cache: Path | None = None) -> None:
    """The user's files outside (and inside) the cache folder are all there, byte for byte."""
    assert (root / "victim.txt").read_bytes() == VICTIM
    assert (root / "d" / "x").read_bytes() == VICTIM
    if cache is not None:
        assert (cache / "notes.txt").read_bytes() == VICTIM


def edit_manifest(cache: Path, change) -> None:
    """Apply `change(manifest_dict)` to cache/manifest.json."""
    data = json.loads((cache / "manifest.json").read_text())
    change(data)
    (cache / "manifest.json").write_text(json.dumps(data))


# ---- 1. a manifest cannot make tc delete (or read) outside the cache --------------------------------------------


@pytest.mark.parametrize("entry", ["../d/x", "../victim.txt", "tokenizer/../../victim.txt", "/ABS/x"])
def test_a_files_entry_outside_the_cache_is_refused_and_a_rerun_deletes_nothing(cache, root, teacher_dir,
                                                                                corpus_file, capsys, entry):
    entry = entry.replace("/ABS", str(root))
    edit_manifest(cache, lambda m: m["files"].update({entry: {"sha256": "00", "bytes": 1}}))
    before = shard_digests(cache)
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, cache))
    one_line(code, err, "manifest.json", entry)
    victims_intact(root, cache)
    assert shard_digests(cache) == before and (cache / "tokenizer" / "tokenizer.json").is_file()


def test_a_force_run_over_a_tampered_manifest_removes_only_its_own_files(cache, root, teacher_dir, corpus_file,
                                                                         capsys):
    edit_manifest(cache, lambda m: m["files"].update({"../victim.txt": {"sha256": "00", "bytes": 1},
                                                      str(root / "d" / "x"): {"sha256": "00", "bytes": 1}}))
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, cache, "--force"))
    assert code == 0, err
    victims_intact(root, cache)
    assert run_cli(capsys, "verify", cache)[0] == 0


@pytest.mark.parametrize("name", ["../outside.arrow", "/ABS/outside.arrow", "sub/../../outside.arrow"])
def test_a_shard_name_outside_the_cache_is_refused_by_verify_and_readers(cache, root, capsys, name):
    # the shard moved outside, its name in the manifest pointing there: verify used to read (and pass) it
    shutil.move(cache / "shard-00000.arrow", root / "outside.arrow")
    name = name.replace("/ABS", str(root))
    edit_manifest(cache, lambda m: m["shards"][0].update({"file": name}))
    code, _, err = run_cli(capsys, "verify", cache)
    one_line(code, err, "manifest.json", name)
    with pytest.raises(CacheError, match="manifest.json"):
        open_cache(cache)


def test_a_name_through_a_symlinked_folder_outside_is_refused(cache, root, capsys):
    (cache / "sub").symlink_to(root / "d")
    edit_manifest(cache, lambda m: m["files"].update({"sub/x": {"sha256": "00", "bytes": 1}}))
    code, _, err = run_cli(capsys, "verify", cache)
    one_line(code, err, "manifest.json", "sub/x")
    victims_intact(root, cache)


@pytest.mark.parametrize("change", [
    lambda m: m.update({"shards": {"file": "x"}}),
    lambda m: m["shards"][0].update({"rows": "100"}),
    lambda m: m["shards"][0].update({"id_end": 10 ** 40}),
    lambda m: m.update({"files": ["tokenizer/tokenizer.json"]}),
    lambda m: m["files"].update({"tokenizer/vocab.txt": "00"}),
    lambda m: m.update({"max_length": 64.5}),
    lambda m: m.update({"tokenizer_dir": "../elsewhere"}),
    lambda m: m.update({"token_embeddings_file": "/etc/passwd"}),
    lambda m: m["extra"].update({"other_files": ["../victim.txt"]}),
    lambda m: m["shards"][1].update({"file": "a\x00b"}),
])
def test_a_malformed_manifest_is_one_line(cache, capsys, change):
    edit_manifest(cache, change)
    code, _, err = run_cli(capsys, "verify", cache)
    one_line(code, err, "manifest.json")


def test_a_manifest_that_is_not_an_object_is_one_line(cache, capsys):
    (cache / "manifest.json").write_text("[1, 2]")
    one_line(*run_cli(capsys, "verify", cache)[::2], "manifest.json")


# ---- 2. nothing is written through a planted link ---------------------------------------------------------------


def test_a_symlinked_lock_file_is_replaced_not_written_through(root):
    cache = root / "out"
    cache.mkdir()
    (cache / LOCK_NAME).symlink_to(root / "victim.txt")
    with FolderLock(cache, "tc encode"):
        assert not (cache / LOCK_NAME).is_symlink() and (cache / LOCK_NAME).is_file()
    victims_intact(root)
    assert not (cache / LOCK_NAME).exists()


def test_a_hard_linked_lock_file_is_not_truncated(root):
    cache = root / "out"
    cache.mkdir()
    os.link(root / "victim.txt", cache / LOCK_NAME)
    with FolderLock(cache, "tc encode"):
        pass
    victims_intact(root)


def test_encode_into_a_folder_with_a_symlinked_lock_keeps_the_target(cache, root, teacher_dir, corpus_file, capsys):
    (cache / LOCK_NAME).symlink_to(root / "victim.txt")
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, cache))
    assert code == 0, err
    victims_intact(root, cache)


def test_atomic_path_replaces_a_planted_tmp_link(root):
    folder = root / "report"
    folder.mkdir()
    (folder / "report.json.tmp").symlink_to(root / "victim.txt")
    atomic_write(folder / "report.json", "{}\n")
    victims_intact(root)
    assert (folder / "report.json").read_text() == "{}\n" and not (folder / "report.json").is_symlink()
    assert not (folder / "report.json.tmp").exists()


def test_atomic_path_replaces_a_link_at_the_target_rather_than_following_it(root):
    folder = root / "report"
    folder.mkdir()
    (folder / "report.json").symlink_to(root / "victim.txt")
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text("new")
    victims_intact(root)
    assert (folder / "report.json").read_text() == "new" and not (folder / "report.json").is_symlink()


def test_a_fresh_encode_never_writes_through_planted_links(root, teacher_dir, corpus_file, capsys):
    out = root / "fresh"
    out.mkdir()
    (out / "manifest.json.tmp").symlink_to(root / "victim.txt")
    (out / "token_embeddings.safetensors.tmp").symlink_to(root / "d" / "x")
    (out / "tokenizer").symlink_to(root / "d")  # the teacher's tokenizer used to be saved into d/
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, out))
    assert code == 0, err
    victims_intact(root)
    assert sorted(p.name for p in (root / "d").iterdir()) == ["x"]
    assert not (out / "tokenizer").is_symlink() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert run_cli(capsys, "verify", out)[0] == 0


def test_links_planted_inside_a_tokenizer_folder_are_not_written_through(root, teacher_dir, corpus_file, capsys):
    out = root / "fresh"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "vocab.txt").symlink_to(root / "victim.txt")
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, out))
    assert code == 0, err
    victims_intact(root)
    assert not (out / "tokenizer" / "vocab.txt").is_symlink()


def test_a_symlinked_tokenizer_folder_is_refused_then_replaced_by_force(cache, root, teacher_dir, corpus_file,
                                                                        capsys):
    shutil.copytree(cache / "tokenizer", root / "elsewhere")
    shutil.rmtree(cache / "tokenizer")
    (cache / "tokenizer").symlink_to(root / "elsewhere")
    (root / "elsewhere" / "mine.txt").write_bytes(VICTIM)
    code, _, err = run_cli(capsys, "verify", cache)
    one_line(code, err, "manifest.json", "tokenizer/")
    code, _, err = run_cli(capsys, *encode_args(teacher_dir, corpus_file, cache, "--force"))
    assert code == 0, err
    victims_intact(root, cache)
    assert (root / "elsewhere" / "mine.txt").read_bytes() == VICTIM  # the link was dropped, not followed
    assert not (cache / "tokenizer").is_symlink() and run_cli(capsys, "verify", cache)[0] == 0


def test_the_traceback_file_is_never_written_through_a_planted_link(tmp_path, monkeypatch):
    from pipeline import failures

    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setenv("TC_LOG_DIR", str(logs))
    monkeypatch.setattr(failures.time, "strftime", lambda fmt: "20260101-000000")
    (logs / f"tc-error-20260101-000000-{os.getpid()}.log").symlink_to(victim)  # the name is guessable
    assert failures.traceback_file("Traceback: boom") is None  # refused, not followed
    assert victim.read_bytes() == VICTIM
