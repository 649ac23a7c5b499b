"""teacher_cache/base/out_folder.py: each --out rule on its own, with real files under tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.base.lock import LOCK_NAME
from teacher_cache.base.out_folder import OutFolder, overlap

OWN = ("model.safetensors", "config.json", "shard-*.arrow")


def folder(path: Path, **kwargs) -> OutFolder:
    """An OutFolder with a few own names (one a glob) and a checkpoint/ folder of its own."""
    return OutFolder(path, "tc test", own=OWN, own_dirs=("checkpoint",), **kwargs)


def test_a_file_as_out_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=rf"^--out {tmp_path / 'afile'}: is a file, not a folder$"):
        folder(tmp_path / "afile").check(force=True)
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_an_out_overlapping_an_input_is_refused(where, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    out = {"equal": cache, "inside": cache / "student", "containing": tmp_path}[where]
    with pytest.raises(UserError, match=rf"^--out {out}: overlaps the cache folder {cache}; choose another folder$"):
        folder(out, inputs={"cache": cache}).check(force=True)
    with pytest.raises(UserError, match="overlaps the cache folder"):
        with folder(out, inputs={"cache": cache}).hold():
            pass
    assert not (cache / "student").exists() and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("where, words", [("equal", "is the --model folder"), ("inside", "is inside --model {m}"),
                                          ("containing", "holds --model {m}")])
def test_a_folder_replaced_whole_says_how_it_overlaps(where, words, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    out = {"equal": model, "inside": model / "sub", "containing": tmp_path}[where]
    with pytest.raises(UserError) as caught:
        OutFolder(out, "tc export", inputs={"--model": model}, replaced_whole=True).refuse_unsafe()
    assert str(caught.value) == f"--out {out}: {words.format(m=model)}; name a new folder"


def test_a_folder_replaced_whole_is_never_the_current_folder_or_above(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in (Path("."), Path("..")):
        with pytest.raises(UserError, match=rf"^--out {out}: is the current folder or one above it"):
            OutFolder(out, "tc export", replaced_whole=True).refuse_unsafe()
    assert OutFolder(Path("sub"), "tc export", replaced_whole=True).refuse_unsafe() == []


def test_overlap_needs_the_input_to_exist_and_follows_links(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert overlap(tmp_path / "link" / "x", tmp_path / "real") == "inside"
    assert overlap(tmp_path / "a", tmp_path / "b") is None
    assert folder(tmp_path / "out", inputs={"cache": tmp_path / "missing"}).check(force=False) == []


def test_not_empty_without_force_names_what_it_holds(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (out / name).write_text("mine")
    (out / LOCK_NAME).write_text("stale")  # a killed run's lock file is not something the folder holds
    with pytest.raises(UserError) as caught:
        folder(out).check(force=False)
    assert str(caught.value) == (f"--out {out}: not empty (holds a.txt, b.txt, c.txt, ...); choose an empty folder "
                                 "or pass --force")
    assert folder(out).check(force=True) == ["a.txt", "b.txt", "c.txt", "d.txt"]
    assert folder(out).check(force=False, ignore=["a.txt", "b.txt", "c.txt", "d.txt"]) == []


def test_an_earlier_run_is_said_in_the_commands_own_words(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint").mkdir()
    said = lambda present: "holds an earlier run; pass --resume" if "checkpoint" in present else None  # noqa: E731
    with pytest.raises(UserError, match=rf"^--out {out}: holds an earlier run; pass --resume$"):
        folder(out).check(force=False, earlier=said)
    (out / "checkpoint").rmdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not empty \(holds notes.txt\)"):
        folder(out).check(force=False, earlier=said)


def test_a_folder_replaced_whole_says_force_replaces_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty; pass --force to replace it$"):
        OutFolder(tmp_path / "out", "tc export", replaced_whole=True).check(force=False)


def test_force_clears_only_own_files_and_never_a_links_target(tmp_path):
    out, victims = tmp_path / "out", tmp_path / "victims"
    out.mkdir()
    victims.mkdir()
    (victims / "theirs.txt").write_text("theirs")
    (tmp_path / "target.bin").write_text("target")
    (out / "model.safetensors").write_text("old")
    (out / "shard-00000.arrow").write_text("old")
    (out / "notes.txt").write_text("mine")  # the user's: stays
    (out / "config.json").symlink_to(tmp_path / "target.bin")  # an own name that is a link: the link goes
    (out / "checkpoint").symlink_to(victims)  # an own folder that is a link: the link goes, never what it holds
    (out / "data").mkdir()
    (out / "data" / "model.safetensors").write_text("mine")  # an own name, but inside the user's folder
    folder(out).clear_own()
    assert sorted(p.name for p in out.iterdir()) == ["data", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "model.safetensors").read_text() == "mine"
    assert (tmp_path / "target.bin").read_text() == "target" and (victims / "theirs.txt").read_text() == "theirs"


def test_clear_own_removes_a_real_own_folder_whole_and_leaves_a_folder_under_a_file_name(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "checkpoint.pt").write_text("old")
    (out / "model.safetensors").mkdir()  # a folder where we write a file: not ours
    (out / "model.safetensors" / "x").write_text("mine")
    (out / "listed.txt").write_text("old")
    folder(out).clear_own(also=["listed.txt"])
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors" / "x").read_text() == "mine"


def test_others_are_the_users_files(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "checkpoint.pt").write_text("ours")
    (out / "shard-00001.arrow").write_text("ours")
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    (out / LOCK_NAME).write_text("")
    assert folder(out).others() == ["sub/notes.txt"]
    assert folder(out).is_own("checkpoint/trainer_state.json") and not folder(out).is_own("sub/notes.txt")


HOLDER = """
import sys
from teacher_cache.base.out_folder import OutFolder
with OutFolder(sys.argv[1], "tc first").hold():
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_holder_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(CacheError, match=rf"^--out {out}: in use by pid {first.pid} .*\(tc first"):
            with OutFolder(out, "tc second").hold():
                pass
    finally:
        first.stdin.close()
        first.wait()
    assert first.returncode == 0
    with OutFolder(out, "tc second").hold() as lock:  # free once the first let go
        assert lock.path == out / LOCK_NAME and lock.path.exists()
    assert not out.exists()  # the lock made the folder and removed it again, empty
