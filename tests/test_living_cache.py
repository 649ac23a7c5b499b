"""A cache that lives with its corpus: a rerun on a changed corpus encodes only the texts the cache lacks (counted
here at the teacher), each text once, versions readable by number, format-1 caches opened and updated, a corpus
edited mid-run and a SIGKILLed update caught or resumed, an update of a cache in a bucket."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from teacher_cache import open_cache
from teacher_cache.encode.changes import plan_changes
from teacher_cache.encode.run import EncodeConfig, encode_corpus
from teacher_cache.versions import text_keys
from tests.conftest import SAMPLE
from tests.helpers import one_line, run_cli, shard_digests, tc_subprocess

LINES = SAMPLE.read_text().splitlines()


def write_corpus(path: Path, lines: list[str]) -> Path:
    """`lines`, one a line."""
    path.write_text("\n".join(lines) + "\n")
    return path


def encode(corpus: Path, out: Path, teacher_dir: Path, **more):
    """The tiny teacher over `corpus` into `out` in 100-row shards (fp32, in this process)."""
    return encode_corpus(EncodeConfig(corpus=[str(corpus)], out=out, teacher=str(teacher_dir), pooling=["mean"],
                                      shard_size=100, max_length=64, quiet=True, precision="fp32", **more))


@pytest.fixture
def teacher_rows(monkeypatch) -> list[int]:
    """Counts the rows the teacher is run on (one entry per call)."""
    from teacher_cache.encode.batching import BatchEncoder

    calls: list[int] = []
    original = BatchEncoder.encode_tokenized

    def counted(self, token_ids, *args, **kwargs):
        calls.append(len(token_ids))
        return original(self, token_ids, *args, **kwargs)

    monkeypatch.setattr(BatchEncoder, "encode_tokenized", counted)
    return calls


def edited(lines: list[str]) -> list[str]:
    """1%-style changes to a 300-line corpus: 6 lines removed, 4 edited, 5 new ones added at places."""
    out = [line for i, line in enumerate(lines) if i not in (10, 11, 150, 151, 290, 299)]
    for i in (3, 40, 41, 200):
        out[i] = out[i] + " (edited)"
    for at, line in zip((0, 50, 120, 121, 280), LINES[1000:1005], strict=True):
        out.insert(at, line)
    return out


def by_text(cache) -> dict[str, np.ndarray]:
    """text -> vector of the version read."""
    return dict(zip(cache.texts(), cache.vectors(), strict=True))


def test_a_changed_corpus_encodes_only_the_changed_texts(tmp_path, teacher_dir, teacher_rows):
    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:300])
    out = tmp_path / "cache"
    encode(corpus, out, teacher_dir)
    assert sum(teacher_rows) == 300
    before = shard_digests(out)
    new_lines = edited(LINES[:300])
    write_corpus(corpus, new_lines)
    teacher_rows.clear()
    manifest = encode(corpus, out, teacher_dir)
    assert sum(teacher_rows) == 9  # 5 new lines + 4 edited ones: nothing else reaches the teacher
    assert {k: shard_digests(out)[k] for k in before} == before  # the old shards are untouched
    newest = manifest.versions[-1]
    assert (newest.version, newest.rows, newest.added, newest.removed) == (2, 299, 9, 10)
    # the same texts and vectors as a fresh encode of the new corpus (batching differs: float noise at most)
    fresh = tmp_path / "fresh"
    encode(write_corpus(tmp_path / "new.txt", new_lines), fresh, teacher_dir)
    ours, theirs = by_text(open_cache(out)), by_text(open_cache(fresh))
    assert set(ours) == set(theirs) == set(new_lines)
    assert max(float(np.abs(ours[t] - theirs[t]).max()) for t in ours) < 1e-5
    # the old version is still readable, whole; an unknown version is one line naming those there are
    old = open_cache(out, version=1)
    assert len(old) == 300 and set(old.texts()) == set(LINES[:300])
    teacher_rows.clear()
    encode(corpus, out, teacher_dir)  # unchanged since: nothing to do
    assert teacher_rows == [] and len(open_cache(out).manifest.versions) == 2


def test_duplicate_lines_are_encoded_once_and_counted(tmp_path, teacher_dir, teacher_rows):
    first = write_corpus(tmp_path / "a.txt", LINES[:150] + LINES[:10])  # 10 repeats inside one file
    second = write_corpus(tmp_path / "b.txt", LINES[140:200])  # 10 more across files
    out = tmp_path / "cache"
    encode_corpus(EncodeConfig(corpus=[str(first), str(second)], out=out, teacher=str(teacher_dir),
                               pooling=["mean"], shard_size=100, max_length=64, quiet=True, precision="fp32"))
    assert sum(teacher_rows) == 200
    cache = open_cache(out)
    assert len(cache) == 200 and cache.version.seen == 220 and cache.version.duplicates == 20
    counts = dict(zip(cache.texts(), cache.row_counts(np.arange(200)), strict=True))
    assert counts[LINES[0]] == 2 and counts[LINES[145]] == 2 and counts[LINES[100]] == 1
    assert sum(counts.values()) == 220


def test_dedup_count_trains_on_each_text_as_often_as_the_corpus_holds_it(tmp_path, teacher_dir):
    from student.tokenizer import WordPieceTokenizer
    from student.training.data import StreamingCacheDataset

    corpus = write_corpus(tmp_path / "a.txt", LINES[:100] + LINES[:30])
    out = tmp_path / "cache"
    encode(corpus, out, teacher_dir)
    cache = open_cache(out)
    tokenizer = WordPieceTokenizer((cache.tokenizer_path / "tokenizer.json").read_bytes(), 64)
    seen = {}
    for mode in ("keep-first", "count"):
        data = StreamingCacheDataset(cache, "embedding", tokenizer, batch_size=16, dedup=mode)
        ids = np.concatenate([b.ids.numpy() for b in data])
        seen[mode] = ids
        assert data.batches_per_epoch(0) == -(-len(ids) // 16)
    assert len(seen["keep-first"]) == 100 and len(set(seen["keep-first"])) == 100
    assert len(seen["count"]) == 130 and set(seen["count"]) == set(seen["keep-first"])


def test_a_key_held_twice_keeps_its_first_row():
    held = text_keys(["a", "b", "a", "c"])  # a format-1 cache with a repeated text
    plan = plan_changes(text_keys(["c", "a", "d", "d"]), held)
    assert plan.live_ids.tolist() == [0, 3] and plan.encode_rows.tolist() == [2] and plan.duplicates == 1
    deleted, dup_ids, dup_counts = plan.version_arrays(5)
    assert deleted.tolist() == [1, 2] and dup_ids.tolist() == [4] and dup_counts.tolist() == [2]


def as_format_1(cache: Path) -> None:
    """Rewrite a cache as today's tc wrote it before keys: shards without a key column, no versions."""
    manifest = json.loads((cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = cache / shard["file"]
        table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()  # not mapped: rewritten below
        table = table.drop_columns(["key"])
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
        shard.pop("keys")
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        shard["bytes"] = path.stat().st_size
    for name in ("versions", "generation", "teachers"):
        manifest.pop(name)
    manifest["format_version"] = 1
    (cache / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_1_cache_opens_and_updates(tmp_path, teacher_dir, capsys, teacher_rows):
    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:300])
    out = tmp_path / "cache"
    encode(corpus, out, teacher_dir)
    as_format_1(out)
    cache = open_cache(out)
    assert len(cache) == 300 and cache.version.version == 1 and "key" not in cache.read_shard(0).column_names
    assert run_cli(capsys, "verify", out)[0] == 0
    write_corpus(corpus, edited(LINES[:300]))
    teacher_rows.clear()
    encode(corpus, out, teacher_dir)  # its keys are hashed from its texts
    assert sum(teacher_rows) == 9
    cache = open_cache(out)
    assert (cache.version.version, len(cache)) == (2, 299) and len(open_cache(out, version=1)) == 300
    assert cache.manifest.format_version == 2


def test_a_newer_format_and_a_missing_version_are_one_line(tmp_path, tiny_cache, capsys):
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "s", "--version", "7")
    one_line(code, err, "--version 7", "no such version", "1")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_cache, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "info", copy)
    one_line(code, err, "newer teacher-cache", "upgrade")


def test_a_corpus_edited_while_it_is_encoded_is_one_line_and_the_rerun_finishes(tmp_path, teacher_dir, capsys,
                                                                                   monkeypatch):
    import teacher_cache.encode.run as run_module

    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:300])
    out = tmp_path / "cache"
    original = run_module.plan_changes

    def edit_then_plan(*args):
        write_corpus(corpus, LINES[:150] + ["A line written while the encode ran."] + LINES[150:300])
        return original(*args)

    monkeypatch.setattr(run_module, "plan_changes", edit_then_plan)
    args = ["encode", "--corpus", corpus, "--out", out, "--teacher", teacher_dir, "--pooling", "mean",
            "--shard-size", "100", "--max-length", "64", "--precision", "fp32", "--quiet"]
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, "changed while it was being encoded", "rerun")
    assert json.loads((out / "manifest.json").read_text())["shards"]  # the shards before the edit are kept
    monkeypatch.setattr(run_module, "plan_changes", original)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert set(open_cache(out).texts()) == set(corpus.read_text().splitlines())


def test_a_sigkilled_update_resumes_to_the_uninterrupted_cache(tmp_path, teacher_dir, capsys):
    base = write_corpus(tmp_path / "base.txt", LINES[:500])
    grown = write_corpus(tmp_path / "grown.txt", LINES[100:2100])  # 100 gone, 1,600 new
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    encode(base, reference, teacher_dir)
    shutil.copytree(reference, killed)
    args = ["encode", "--corpus", grown, "--out", killed, "--teacher", teacher_dir, "--pooling", "mean",
            "--shard-size", "100", "--max-length", "64", "--precision", "fp32", "--max-tokens", "256", "--quiet"]
    assert run_cli(capsys, *[reference if a == killed else a for a in args])[0] == 0  # the uninterrupted update
    proc = tc_subprocess(*args)
    deadline = time.monotonic() + 120
    while len(list(killed.glob("shard-*.arrow"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    assert len(open_cache(killed)) == 500  # meanwhile: the last finished version
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert shard_digests(killed) == shard_digests(reference)
    ours, theirs = open_cache(killed), open_cache(reference)
    assert ours.version.rows == theirs.version.rows == 2000
    assert np.array_equal(ours.deleted_ids, theirs.deleted_ids)


def test_force_replaces_every_version(tmp_path, teacher_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:200] + LINES[:5])
    out = tmp_path / "cache"
    encode(corpus, out, teacher_dir)
    write_corpus(corpus, LINES[50:250])
    encode(corpus, out, teacher_dir)
    assert (out / "versions").is_dir() and len(open_cache(out).manifest.versions) == 2
    manifest = encode(corpus, out, teacher_dir, force=True)
    assert [v.version for v in manifest.versions] == [1] and not (out / "versions").exists()
    assert len(open_cache(out)) == 200


def test_an_update_of_a_cache_in_a_bucket_fetches_only_keys(s3_env, tmp_path, teacher_dir, capsys, teacher_rows):
    pytest.importorskip("moto.server")
    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:300])
    url = f"s3://{s3_env}/living"
    args = ["encode", "--corpus", corpus, "--out", url, "--teacher", teacher_dir, "--pooling", "mean",
            "--shard-size", "100", "--max-length", "64", "--precision", "fp32", "--quiet"]
    assert run_cli(capsys, *args)[0] == 0
    write_corpus(corpus, edited(LINES[:300]))
    teacher_rows.clear()
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert sum(teacher_rows) == 9
    cache = open_cache(url, cache_dir=tmp_path / "mirror")
    assert (cache.version.version, len(cache)) == (2, 299)
    assert set(cache.texts()) == set(edited(LINES[:300]))


def two_versions(tmp_path: Path, teacher_dir: Path) -> Path:
    """A cache of the first 300 sample lines (version 1), then of their edited() form (version 2)."""
    corpus = write_corpus(tmp_path / "corpus.txt", LINES[:300])
    out = tmp_path / "cache"
    encode(corpus, out, teacher_dir)
    write_corpus(corpus, edited(LINES[:300]))
    encode(corpus, out, teacher_dir)
    return out


def test_info_verify_and_probe_take_a_version(tmp_path, teacher_dir, capsys):
    out = two_versions(tmp_path, teacher_dir)
    code, shown, err = run_cli(capsys, "info", out)
    assert code == 0 and "1 (" in shown and "2 (" in shown and "+9 -10" in shown and "showing 2" in shown, err
    code, shown, err = run_cli(capsys, "info", out, "--version", "1")
    assert code == 0 and "showing 1" in shown and "300 in 3 shard(s)" in shown, err
    for version in (1, 2):  # token statistics count the version's live rows only
        cache = open_cache(out, version=version)
        live = np.concatenate([b.n_tokens for b in cache.iter_batches(with_texts=False)])
        assert len(live) == len(cache) and cache.token_stats()["total"] == int(live.sum())
    assert open_cache(out, version=2).deleted_ids.size  # version 2 removed rows: the check above has teeth
    code, shown, err = run_cli(capsys, "verify", out, "--version", "1")
    assert code == 0 and "300 rows" in shown, err
    code, _, err = run_cli(capsys, "verify", out, "--version", "3")
    one_line(code, err, "--version 3", "no such version")
    student = tmp_path / "student"
    code, _, err = run_cli(capsys, "train-student", "--shards", out, "--out", student, "--version", "1",
                           "--epochs", "1", "--batch-size", "32", "--val-rows", "20", "--quiet")
    assert code == 0, err
    args = json.loads((student / "training_args.json").read_text())
    assert args["cache"]["version"] == 1 and args["cache"]["rows"] == 300
    code, _, err = run_cli(capsys, "probe", "--shards", out, "--student", student, "--version", "1",
                           "--report", tmp_path / "probe", "--queries", "20", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "probe" / "report.json").read_text())["rows_probed"] == 300


def test_a_changed_version_file_is_caught(tmp_path, teacher_dir, capsys):
    out = two_versions(tmp_path, teacher_dir)
    version_file = out / "versions" / "v00002.safetensors"
    data = bytearray(version_file.read_bytes())
    data[-3] ^= 0x01  # inside the deleted ids
    version_file.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", out)
    one_line(code, err, "v00002.safetensors", "checksum")
