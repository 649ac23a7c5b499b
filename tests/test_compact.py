"""`tc compact`: the newest version's live rows in fresh shards, ids renumbered, older versions gone; safe to kill at
any moment (the cache stays readable, a rerun finishes with the same result)."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pyarrow as pa
import pytest

from teacher_cache import compact, open_cache
from teacher_cache.base.errors import CacheError
from teacher_cache.base.lock import FolderLock
from teacher_cache.encode.run import EncodeConfig, encode_corpus
from teacher_cache.shards import read_shard
from teacher_cache.versions import text_keys
from tests.conftest import SAMPLE
from tests.helpers import one_line, run_cli, shard_digests, tc_subprocess
from tests.test_encode_safety import wait_for

LINES = SAMPLE.read_text().splitlines()


def encode(out, teacher_dir, corpus, lines, shard_size=100):
    """Write `lines` as the corpus and encode it into `out` (a changed corpus: a new version)."""
    corpus.write_text("\n".join(lines) + "\n")
    return encode_corpus(EncodeConfig(corpus=[str(corpus)], out=out, teacher=str(teacher_dir),
                                      pooling=["mean", "cls"], shard_size=shard_size, max_length=64, quiet=True,
                                      precision="fp32"))


def edited(lines):
    """The corpus changed: lines 50-79 removed, 60 new ones added, 10 old and 5 new ones twice."""
    n = len(lines)
    return lines[:50] + lines[80:] + LINES[n:n + 60] + lines[:10] + LINES[n:n + 5]


@pytest.fixture(scope="module")
def versioned(tmp_path_factory, teacher_dir):
    """A cache with two versions (300 rows, then 330 live of 360: 30 deleted, duplicates counted)."""
    folder = tmp_path_factory.mktemp("versioned")
    out, corpus = folder / "cache", folder / "corpus.txt"
    encode(out, teacher_dir, corpus, LINES[:300])
    encode(out, teacher_dir, corpus, edited(LINES[:300]))
    return out


@pytest.fixture
def cache(tmp_path, versioned):
    """A fresh copy of the two-version cache."""
    copy = tmp_path / "cache"
    shutil.copytree(versioned, copy)
    return copy


@pytest.fixture(scope="module")
def reference(tmp_path_factory, versioned):
    """The two-version cache compacted once, uninterrupted."""
    copy = tmp_path_factory.mktemp("reference") / "cache"
    shutil.copytree(versioned, copy)
    compact.compact_cache(copy, quiet=True)
    return copy


def contents(folder):
    """What a reader of the newest version sees: texts, both vector columns, duplicate counts, in id order."""
    cache = open_cache(folder)
    ids = np.concatenate([b.ids for b in cache.iter_batches(batch_size=1000)])
    return {"texts": cache.texts(), "mean": cache.vectors("mean"), "cls": cache.vectors("cls"),
            "counts": cache.row_counts(ids), "version": cache.version.version}


def assert_same_rows(a, b):
    assert a["texts"] == b["texts"] and a["version"] == b["version"]
    assert np.array_equal(a["mean"], b["mean"]) and np.array_equal(a["cls"], b["cls"])
    assert np.array_equal(a["counts"], b["counts"])


def files(folder):
    """Every file in the folder (relative), the lock excluded."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != ".tc.lock")


def test_compact_keeps_the_newest_versions_rows_renumbered(cache, capsys):
    before = contents(cache)
    old = json.loads((cache / "manifest.json").read_text())
    assert len(old["versions"]) == 2 and old["versions"][1]["file"]
    code, out, err = run_cli(capsys, "compact", cache)
    assert code == 0, err
    assert "compacted version 2: 330 rows in 4 shards (was 360 rows in 4 shards)" in out and "MiB freed" in out
    assert_same_rows(contents(cache), before)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["generation"] == 1 and manifest["complete"] and manifest["rows"] == 330
    assert [s["file"] for s in manifest["shards"]] == [f"shard-g1-{i:05d}.arrow" for i in range(4)]
    assert [s["rows"] for s in manifest["shards"]] == [100, 100, 100, 30] and all(s["keys"] for s in manifest["shards"])
    (version,) = manifest["versions"]
    kept = {k: old["versions"][1][k] for k in ("version", "corpus_fingerprint", "corpus_files", "created", "added",
                                                "removed", "seen", "duplicates")}
    assert {k: version[k] for k in kept} == kept and (version["shards"], version["rows"]) == (4, 330)
    assert version["file"] == "versions/g1-v00002.safetensors" and version["file"] in manifest["files"]
    # ids 0..n-1 contiguous, keys are the texts' keys, every column kept
    table = pa.concat_tables([read_shard(cache / s["file"]) for s in manifest["shards"]])
    assert table.column("id").to_pylist() == list(range(330))
    assert np.array_equal(table.column("key").to_numpy(), text_keys(before["texts"]))
    assert table.schema.names == ["id", "text", "embedding", "embedding_cls", "n_tokens", "key"]
    # the old shards and version file are gone; nothing else was touched
    assert not any((cache / s["file"]).exists() for s in old["shards"])
    assert not (cache / old["versions"][1]["file"]).exists()
    assert files(cache) == sorted([s["file"] for s in manifest["shards"]] + ["manifest.json", *manifest["files"]])
    code, out, err = run_cli(capsys, "verify", cache)
    assert code == 0 and "ok: 4 shards, 330 rows" in out, err
    with pytest.raises(CacheError, match="--version 1: no such version.*the cache has 2$"):
        open_cache(cache, version=1)
    assert_same_rows(contents(cache), {**before, "version": open_cache(cache, version=2).version.version})


def test_compact_twice_is_nothing_to_do(cache, tiny_cache, tmp_path, capsys):
    assert run_cli(capsys, "compact", cache)[0] == 0
    digests = shard_digests(cache)
    code, out, err = run_cli(capsys, "compact", cache)
    assert code == 0 and "version 2: nothing to do" in out, err
    assert shard_digests(cache) == digests
    fresh = tmp_path / "fresh"
    shutil.copytree(tiny_cache, fresh)  # one version, no deleted rows: compact already
    code, out, err = run_cli(capsys, "compact", "--shards", fresh)
    assert code == 0 and "version 1: nothing to do" in out, err
    assert files(fresh) == files(tiny_cache)


def test_encode_after_compact_appends_generation_shards(cache, teacher_dir, tmp_path):
    compact.compact_cache(cache, quiet=True)
    lines = open_cache(cache).texts()
    corpus = tmp_path / "corpus.txt"
    manifest = encode(cache, teacher_dir, corpus, lines[20:] + LINES[1000:1150])
    assert [s.file for s in manifest.shards][4:] == ["shard-g1-00004.arrow", "shard-g1-00005.arrow"]
    assert [v.version for v in manifest.versions] == [2, 3]
    assert open_cache(cache).texts() == lines[20:] + LINES[1000:1150]
    assert open_cache(cache, version=2).texts() == lines
    assert not open_cache(cache).verify()
    compact.compact_cache(cache, quiet=True)  # and compacts again, into generation 2
    assert open_cache(cache).texts() == lines[20:] + LINES[1000:1150]
    assert {s.file[:9] for s in open_cache(cache).manifest.shards} == {"shard-g2-"}
    assert open_cache(cache).id_rows == len(open_cache(cache)) == 460


class Crash(Exception):
    """A simulated crash."""


@pytest.mark.parametrize("point", ["shard0", "shard1", "shard3", "version_file", "swap", "removals"])
def test_a_crash_at_any_point_keeps_the_cache_and_a_rerun_finishes(cache, reference, monkeypatch, point):
    before = contents(cache)
    monkeypatch.setattr(compact, "remove_file", lambda path: None)  # a crash cleans nothing up
    if point.startswith("shard"):
        real, calls = compact.write_main_shard, []

        def write_then_crash(*args):
            if len(calls) == int(point[5:]):
                raise Crash
            calls.append(1)
            return real(*args)
        monkeypatch.setattr(compact, "write_main_shard", write_then_crash)
    else:
        name = {"version_file": "write_version_file", "swap": "swap", "removals": "remove_old"}[point]
        monkeypatch.setattr(compact, name, lambda *args: (_ for _ in ()).throw(Crash))
    with pytest.raises(Crash):
        compact.compact_cache(cache, quiet=True)
    monkeypatch.undo()
    swapped = point == "removals"
    assert json.loads((cache / "manifest.json").read_text())["generation"] == int(swapped)
    assert_same_rows(contents(cache), before)  # readable, the same rows, before and after the swap
    assert not open_cache(cache).verify()
    result = compact.compact_cache(cache, quiet=True)
    assert result.leftovers > 0 or point == "shard0"
    assert shard_digests(cache) == shard_digests(reference) and files(cache) == files(reference)
    assert_same_rows(contents(cache), before)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, CacheError("shard-g1-00001.arrow: no space left")])
def test_ctrl_c_or_a_full_disk_leaves_the_old_cache_only(cache, monkeypatch, interrupt):
    before, listed = contents(cache), files(cache)
    real, calls = compact.write_main_shard, []

    def write_once(*args):
        if calls:
            raise interrupt
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(compact, "write_main_shard", write_once)
    with pytest.raises((KeyboardInterrupt, CacheError)):
        compact.compact_cache(cache, quiet=True)
    assert files(cache) == listed  # the new shard written so far is removed again: only the old cache is left
    assert_same_rows(contents(cache), before)


def test_refused_while_another_writer_holds_the_lock(cache, capsys):
    digests = shard_digests(cache)
    with FolderLock(cache, "tc encode"):
        code, _, err = run_cli(capsys, "compact", cache)
    one_line(code, err, "in use by", "tc encode")
    assert shard_digests(cache) == digests


def test_incomplete_cache_store_url_and_missing_folder_are_one_line(cache, tmp_path, capsys):
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["complete"] = False
    (cache / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "compact", cache)
    one_line(code, err, str(cache), "rerun tc encode first")
    assert not list(cache.glob("shard-g1-*"))
    one_line(*run_cli(capsys, "compact", "memory://somewhere/cache")[::2], "compact a local copy")
    one_line(*run_cli(capsys, "compact", tmp_path / "nothing")[::2], "no such cache folder")
    assert not (tmp_path / "nothing").exists()
    one_line(*run_cli(capsys, "compact")[::2], "CACHE")


def add_side_teacher(folder, name="b", covered=None):
    """A side teacher by hand, in the on-disk format: each main shard's ids, its vectors doubled, n_tokens."""
    from teacher_cache.cache_files import file_record

    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "teachers" / name).mkdir(parents=True)
    shards = []
    for shard in manifest["shards"][:covered]:
        table = read_shard(folder / shard["file"])
        side = pa.table({"id": table.column("id"),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(
                             table.column("embedding").combine_chunks().flatten().to_numpy() * 2), 32),
                         "n_tokens": table.column("n_tokens")})
        rel = f"teachers/{name}/{shard['file']}"
        with pa.ipc.new_file(str(folder / rel), side.schema) as writer:
            writer.write_table(side)
        record = file_record(folder / rel)
        shards.append({**shard, "file": rel, "keys": False, "sha256": record["sha256"], "bytes": record["bytes"]})
    manifest["teachers"][name] = {
        "folder": f"teachers/{name}", "teacher": f"/models/{name}", "teacher_hash": "0" * 16, "pooling": ["mean"],
        "dim": 32, "dtype": "float32", "precision": "fp32", "normalize": False, "max_length": 64,
        "columns": {"embedding": "mean"}, "shards": shards, "files": {}, "complete": covered is None}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_side_teachers_are_rewritten_at_the_same_rows(cache, capsys):
    add_side_teacher(cache)
    before = contents(cache)
    old_side = [s["file"] for s in json.loads((cache / "manifest.json").read_text())["teachers"]["b"]["shards"]]
    code, _, err = run_cli(capsys, "compact", cache)
    assert code == 0, err
    manifest = json.loads((cache / "manifest.json").read_text())
    entry = manifest["teachers"]["b"]
    assert entry["complete"] and [s["file"] for s in entry["shards"]] == [
        f"teachers/b/shard-g1-{i:05d}.arrow" for i in range(4)]
    for main, side in zip(manifest["shards"], entry["shards"], strict=True):
        assert (main["rows"], main["id_start"], main["id_end"]) == (side["rows"], side["id_start"], side["id_end"])
    side = pa.concat_tables([read_shard(cache / s["file"]) for s in entry["shards"]])
    assert side.column("id").to_pylist() == list(range(330)) and side.schema.names == ["id", "embedding", "n_tokens"]
    assert np.array_equal(side.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 32),
                          before["mean"] * 2)
    assert not any((cache / f).exists() for f in old_side)
    assert sorted(p.name for p in (cache / "teachers" / "b").iterdir()) == [f"shard-g1-{i:05d}.arrow" for i in range(4)]
    code, out, err = run_cli(capsys, "verify", cache)
    assert code == 0 and "1 side teacher(s), 4 side shards" in out, err


def test_a_side_teacher_not_covering_every_shard_is_refused(cache, capsys):
    add_side_teacher(cache, covered=2)
    listed = files(cache)
    code, _, err = run_cli(capsys, "compact", cache)
    one_line(code, err, "teacher b covers 2 of 4 shards", "tc encode --teacher /models/b --out")
    assert files(cache) == listed


def test_compact_help_has_an_example(capsys):
    code, out, _ = run_cli(capsys, "compact", "--help")
    assert code == 0 and "Example: tc compact" in out


@pytest.fixture(scope="module")
def bigger(tmp_path_factory, teacher_dir):
    """2,000 rows in shards of 20, then a changed corpus: a compaction writes ~100 shards, long enough to kill."""
    folder = tmp_path_factory.mktemp("bigger")
    out, corpus = folder / "cache", folder / "corpus.txt"
    encode(out, teacher_dir, corpus, LINES[:2000], shard_size=20)
    encode(out, teacher_dir, corpus, edited(LINES[:2000]), shard_size=20)
    reference = folder / "reference"
    shutil.copytree(out, reference)
    compact.compact_cache(reference, quiet=True)
    return out, reference


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_compact_subprocess_then_rerun(bigger, tmp_path, sig, capsys):
    source, reference = bigger
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    before = contents(cache)
    proc = tc_subprocess("compact", cache)
    assert wait_for(lambda: any(cache.glob("shard-g1-*")) or proc.poll() is not None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -sig if sig == signal.SIGKILL else 143), err
    if sig == signal.SIGTERM and proc.returncode == 143:
        assert "terminated (SIGTERM)" in err and "Traceback" not in err
        generation = json.loads((cache / "manifest.json").read_text())["generation"]
        assert generation == 1 or not list(cache.glob("shard-g1-*"))  # before the swap: its new shards removed
    assert_same_rows(contents(cache), before)
    code, _, err = run_cli(capsys, "compact", cache)
    assert code == 0, err
    assert shard_digests(cache) == shard_digests(reference) and files(cache) == files(reference)
    assert_same_rows(contents(cache), before)
