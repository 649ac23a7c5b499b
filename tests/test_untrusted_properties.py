"""Property-based checks of issue #21 (a cache is data, never instructions): whatever a manifest.json, a task.json
or a student's config.json holds (names with '..', absolute paths, NUL, unicode, huge numbers, wrong types), it
either loads or is refused with one UserError line, and no file outside the folder is ever touched.

Plus the student side of the same rule: a student folder's config.json, and links planted where a student is saved.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from teacher_cache.base.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
VICTIM = b"outside the folder: must never change\n"
NASTY = ["..", "../x", "../../victim.txt", "/etc/passwd", "/", "a/../../b", "a//b", "./a", "a/.", "a/", "a\x00b",
         "C:\\x", "c:x", "\\\\server\\share", "tokenizer/../../victim.txt", "ü/ß.arrow", "shard-00000.arrow",
         "tokenizer", "tokenizer/tokenizer.json", "x" * 300, "a\nb", "\ud800x", "\udc80", ".tc.lock", "sub/x"]
NAMES = st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.builds("../{}".format, st.text(max_size=8)),
                  st.builds("/{}".format, st.text(max_size=8)))
WEIRD = st.one_of(NAMES, st.none(), st.booleans(), st.integers(-3, 3), st.integers(2 ** 62, 2 ** 80),
                  st.integers(max_value=-(2 ** 63)), st.floats(allow_nan=True, allow_infinity=True),
                  st.lists(st.one_of(NAMES, st.integers()), max_size=3),
                  st.dictionaries(NAMES, st.one_of(st.integers(), NAMES), max_size=3))


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path under `root` (links not followed) -> (kind, bytes or link target, mtime), `skip` left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if skip is not None and (path == skip or skip in path.parents):
                continue
            info = os.lstat(path)
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path), info.st_mtime_ns)
            elif path.is_file():
                found[str(path)] = ("file", path.read_bytes(), info.st_mtime_ns)
            else:
                found[str(path)] = ("dir", None, info.st_mtime_ns)
    return found


def one_line(exc: BaseException) -> None:
    """A refusal is a UserError (CacheError included) with one non-empty line of message."""
    assert isinstance(exc, UserError), repr(exc)
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)


def leaf_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """The key paths of every value inside a JSON document (the document itself excluded)."""
    paths = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        paths += leaf_paths(child, prefix + (key,))
    return paths


def mutated(data: dict, draw) -> dict:
    """`data` with one to three random changes: a value replaced, a key renamed or removed, a key added."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(leaf_paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "set", "set", "rename", "delete", "add"]))
        if action == "set":
            parent[path[-1]] = draw(WEIRD)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(NAMES)] = parent.pop(path[-1])
        elif action == "delete":
            parent.pop(path[-1])
        elif action == "add" and isinstance(parent, dict):
            parent[draw(NAMES)] = draw(st.one_of(WEIRD, st.just({"sha256": "00", "bytes": 1})))
    return data


@pytest.fixture(scope="module")
def base_manifest(tiny_cache) -> dict:
    """The tiny cache's manifest.json."""
    return json.loads((tiny_cache / "manifest.json").read_text())


def scratch(parent: Path) -> Path:
    """A scratch root with victims outside the cache; the cache at root/cache (hard links: cheap, and nothing
    here may write into a file anyway)."""
    root = Path(tempfile.mkdtemp(dir=parent))
    (root / "d").mkdir()
    (root / "victim.txt").write_bytes(VICTIM)
    (root / "d" / "x").write_bytes(VICTIM)
    return root


@FAST
@given(st.data())
def test_any_manifest_loads_or_is_one_line_and_nothing_outside_is_touched(tiny_cache, base_manifest, data):
    from teacher_cache.cache_files import recheck, remove_strays, wipe_cache
    from teacher_cache.manifest import CacheManifest
    from teacher_cache.reader import TeacherCache

    manifest = mutated(base_manifest, data.draw)
    root = scratch(tiny_cache.parent)
    try:
        cache = root / "cache"
        shutil.copytree(tiny_cache, cache, copy_function=os.link)  # hard links: cheap, and tc only ever unlinks
        (cache / "manifest.json").unlink()  # a new inode: writing through the link would change the shared fixture
        (cache / "manifest.json").write_text(json.dumps(manifest))
        before = snapshot(root)
        try:
            loaded = CacheManifest.load(cache)
        except UserError as exc:
            event("refused")
            one_line(exc)
            assert snapshot(root) == before  # refused before anything was read, written or removed
            return
        event("loaded")
        assert snapshot(root) == before
        try:
            problems = TeacherCache(cache, allow_partial=True).verify()
            assert all("\n" not in p for p in problems)
        except UserError as exc:
            one_line(exc)
        # what a resume and a --force run would remove: only files of this cache
        recheck(cache, loaded)
        remove_strays(cache, loaded)
        wipe_cache(cache, loaded)
        assert snapshot(root, skip=cache) == {k: v for k, v in before.items() if not k.startswith(str(cache))}
    finally:
        shutil.rmtree(root)


@FAST
@given(NAMES)
def test_inside_returns_a_path_in_the_folder_or_refuses_in_one_line(tmp_path_factory, name):
    from teacher_cache.base.safe_paths import inside

    folder = tmp_path_factory.getbasetemp() / "names" / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = inside(folder, name, "manifest.json: files key")
    except UserError as exc:
        one_line(exc)
        return
    resolved = path.resolve()
    assert folder.resolve() in resolved.parents


def task_json_bases() -> list[dict]:
    """A fine-tuned student on STS-B (cosine head) and a fine-tuned teacher on MRPC, as task.json holds them."""
    from finetune.tasks import TASKS

    student = {"kind": "student", "task": TASKS["stsb"].to_dict(), "features": "cosine",
               "head": {"dim": 32, "pair": True, "n_out": 1, "hidden": 0, "dropout": 0.1, "kind": "cosine",
                        "score_range": [0.0, 5.0]}, "args": {"epochs": 1}}
    teacher = {"kind": "teacher", "task": TASKS["mrpc"].to_dict(), "max_length": 128, "args": {}}
    return json.loads(json.dumps([student, teacher]))  # tuples as lists, as task.json holds them


@FAST
@given(st.data())
def test_any_task_json_loads_or_is_one_line(tmp_path_factory, data):
    from finetune.task_json import read_task_json
    from finetune.task_model import TaskHead

    meta = mutated(data.draw(st.sampled_from(task_json_bases())), data.draw)
    root = scratch(tmp_path_factory.getbasetemp())
    try:
        (root / "ft").mkdir()
        (root / "ft" / "task.json").write_text(json.dumps(meta))
        before = snapshot(root)
        try:
            loaded = read_task_json(root / "ft")  # builds the TaskSpec that tc predict and the loaders use
            if loaded.kind == "student":
                TaskHead(**loaded.meta["head"])
            event("loaded")
        except UserError as exc:
            event("refused")
            one_line(exc)
        assert snapshot(root) == before
    finally:
        shutil.rmtree(root)


@FAST
@given(st.data())
def test_any_student_config_loads_or_is_one_line(student_dir, tmp_path_factory, data):
    from student.config import CONFIG_NAME, StudentConfig

    config = mutated(json.loads((student_dir / CONFIG_NAME).read_text()), data.draw)
    root = scratch(tmp_path_factory.getbasetemp())
    try:
        (root / "s").mkdir()
        (root / "s" / CONFIG_NAME).write_text(json.dumps(config))
        try:
            loaded = StudentConfig.load(root / "s")
            assert loaded.vocab_size * loaded.emb_dim <= 1 << 31  # no absurd allocation follows
            event("loaded")
        except UserError as exc:
            event("refused")
            one_line(exc)
    finally:
        shutil.rmtree(root)


# ---- the student side: links planted where a student is saved ---------------------------------------------------


def test_saving_a_student_replaces_planted_links_instead_of_writing_through(student_dir, tmp_path):
    from student import Student

    (tmp_path / "victim.txt").write_bytes(VICTIM)
    (tmp_path / "victims").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "modules.json", "config.json.tmp"):
        (out / name).symlink_to(tmp_path / "victim.txt")
    Student.from_pretrained(student_dir).save_pretrained(out)
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM
    assert not any(p.is_symlink() for p in out.iterdir())
    Student.from_pretrained(out)


def test_a_symlinked_checkpoint_folder_is_replaced_not_written_through(tmp_path):
    import torch

    from student.training.checkpoint import CHECKPOINT_DIR, clear_output, save_checkpoint

    (tmp_path / "victims").mkdir()
    (tmp_path / "victims" / "mine.txt").write_bytes(VICTIM)
    out = tmp_path / "out"
    out.mkdir()
    (out / CHECKPOINT_DIR).symlink_to(tmp_path / "victims")
    save_checkpoint(out, {"epoch": 0, "weights": torch.zeros(2)})
    assert sorted(p.name for p in (tmp_path / "victims").iterdir()) == ["mine.txt"]
    assert not (out / CHECKPOINT_DIR).is_symlink()
    (out / CHECKPOINT_DIR).rename(out / "kept")
    (out / CHECKPOINT_DIR).symlink_to(tmp_path / "victims")
    clear_output(out)  # --force: the link goes, never what it points to
    assert (tmp_path / "victims" / "mine.txt").read_bytes() == VICTIM and not (out / CHECKPOINT_DIR).exists()


@pytest.mark.parametrize("field, value", [("vocab_size", 10 ** 12), ("emb_dim", "16"), ("layers", True),
                                          ("kernel_sizes", 3), ("dropout", float("nan")), ("teacher", [])])
def test_a_malformed_student_config_is_one_line(student_dir, tmp_path, field, value):
    from student import Student
    from student.config import CONFIG_NAME

    folder = tmp_path / "s"
    shutil.copytree(student_dir, folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config[field] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(UserError, match=rf"{CONFIG_NAME}: {field} = ") as caught:
        Student.from_pretrained(folder)
    one_line(caught.value)
