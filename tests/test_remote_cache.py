"""A cache in an object store: encode -> verify -> info -> train -> probe through a real S3 server (moto, 127.0.0.1),
the shards equal to a local encode's, a SIGKILLed encode resumed, the bounded local shard cache, one-line errors."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from teacher_cache.reader import open_cache
from teacher_cache.storage import Store
from tests.helpers import one_line, run_cli, tc_subprocess

pytest.importorskip("moto.server")


def encode_args(corpus: Path, teacher: Path, out: str, *more: str) -> list[str]:
    """`tc encode` of the tiny teacher over `corpus` in 100-row shards."""
    return ["encode", "--corpus", corpus, "--out", out, "--teacher", teacher, "--pooling", "mean", "--shard-size",
            "100", "--max-length", "64", "--precision", "fp32", "--quiet", *more]


@pytest.fixture
def remote_cache(s3_env, capsys, corpus_file, teacher_dir) -> str:
    """The 300-row tiny cache, encoded straight into a bucket."""
    url = f"s3://{s3_env}/caches/tiny"
    code, _, err = run_cli(capsys, *encode_args(corpus_file, teacher_dir, url))
    assert code == 0, err
    return url


def test_encode_into_a_bucket_equals_a_local_encode(remote_cache, capsys, tmp_path, corpus_file, teacher_dir):
    local = tmp_path / "local"
    assert run_cli(capsys, *encode_args(corpus_file, teacher_dir, str(local)))[0] == 0
    store = Store.open(remote_cache)
    remote_manifest = json.loads(store.read_bytes("manifest.json"))
    local_manifest = json.loads((local / "manifest.json").read_text())
    assert remote_manifest["complete"] and remote_manifest["rows"] == 300
    assert [s["sha256"] for s in remote_manifest["shards"]] == [s["sha256"] for s in local_manifest["shards"]]
    assert remote_manifest["files"] == local_manifest["files"]  # tokenizer, token embeddings, token outputs
    names = store.list()
    assert {"manifest.json", "shard-00000.arrow", "shard-00002.arrow", "tokenizer/tokenizer.json"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp") or n.endswith(".lock")]  # nothing half-written, no lock


def test_verify_info_train_probe_round_trip(remote_cache, capsys, tmp_path):
    code, out, err = run_cli(capsys, "verify", remote_cache)
    assert code == 0 and "ok: 3 shards, 300 rows" in out, err
    code, out, err = run_cli(capsys, "info", remote_cache)
    assert code == 0 and "300 in 3 shard(s)" in out and "in the store" in out, err
    student = tmp_path / "student"
    cache_dir = tmp_path / "shard-cache"
    code, _, err = run_cli(capsys, "train-student", "--shards", remote_cache, "--out", student, "--epochs", "1",
                           "--cache-dir", cache_dir, "--quiet")
    assert code == 0, err
    args = json.loads((student / "training_args.json").read_text())
    assert args["cache"]["path"] == remote_cache
    code, out, err = run_cli(capsys, "probe", "--shards", remote_cache, "--student", student, "--report",
                             tmp_path / "probe", "--cache-dir", cache_dir, "--queries", "50")
    assert code == 0, err
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert report["rows_probed"] == 300


def test_training_from_the_bucket_learns_what_a_local_cache_teaches(remote_cache, capsys, tmp_path, corpus_file,
                                                                      teacher_dir):
    local = tmp_path / "local"
    assert run_cli(capsys, *encode_args(corpus_file, teacher_dir, str(local)))[0] == 0
    for name, shards in (("a", remote_cache), ("b", str(local))):
        code, _, err = run_cli(capsys, "train-student", "--shards", shards, "--out", tmp_path / name, "--epochs",
                               "1", "--cache-dir", tmp_path / "c", "--quiet", "--seed", "3")
        assert code == 0, err
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # the same batches in the same order: the same weights, bit for bit
        assert (a[key] == b[key]).all(), key


def test_bounded_shard_cache_never_holds_more_than_its_limit(remote_cache):
    cache = open_cache(remote_cache, cache_limit=1)  # smaller than one shard
    with pytest.raises(Exception, match="--cache-limit .*smaller than one shard"):
        cache.read_shard(0)
    biggest = max(s.bytes for s in cache.manifest.shards)
    cache = open_cache(remote_cache, cache_limit=biggest * 2 + biggest // 2)  # room for two and a half shards
    total = 0
    for _ in range(2):
        for batch in cache.iter_batches(batch_size=64, shuffle=True):
            total += len(batch.ids)
            on_disk = sum(p.stat().st_size for p in (cache.directory / "shards").glob("shard-*.arrow"))
            assert on_disk <= cache.cache_limit
    assert total == 600
    stats = cache.shard_cache.stats
    assert stats["peak_bytes"] <= cache.cache_limit and stats["downloads"] >= 3
    cache.close()


def test_a_corrupted_object_is_named_after_two_downloads(remote_cache, tmp_path):
    store = Store.open(remote_cache)
    data = bytearray(store.read_bytes("shard-00001.arrow"))
    data[-100] ^= 0xFF
    store.put("shard-00001.arrow", bytes(data))
    cache = open_cache(remote_cache, cache_dir=tmp_path / "c")
    with pytest.raises(Exception, match="shard-00001.arrow.*checksum"):
        cache.read_shard(1)
    assert cache.shard_cache.stats["refetches"] >= 1


def test_sigkill_during_an_encode_into_a_bucket_resumes_to_the_same_cache(s3_env, capsys, tmp_path, teacher_dir):
    lines = (Path(__file__).resolve().parent.parent / "data" / "sample_corpus.txt").read_text().splitlines()[:1200]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    url = f"s3://{s3_env}/killed"
    proc = tc_subprocess(*encode_args(corpus, teacher_dir, url))
    store = Store.open(url)
    deadline = time.time() + 120
    while time.time() < deadline and len(store.list("shard-*")) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(json.loads(store.read_bytes("manifest.json"))["shards"]) < 12  # killed part-way
    code, _, err = run_cli(capsys, *encode_args(corpus, teacher_dir, url))
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert run_cli(capsys, *encode_args(corpus, teacher_dir, str(fresh)))[0] == 0
    resumed = json.loads(store.read_bytes("manifest.json"))
    assert resumed["complete"] and resumed["rows"] == 1200
    assert [s["sha256"] for s in resumed["shards"]] == [
        s["sha256"] for s in json.loads((fresh / "manifest.json").read_text())["shards"]]
    assert sorted(store.list("shard-*")) == [s["file"] for s in resumed["shards"]]  # no stray object left


def test_remote_bad_input_is_one_line(s3_env, capsys, corpus_file, teacher_dir, tmp_path):
    store = Store.open(f"s3://{s3_env}/busy")
    store.put("notes.txt", "the user's\n")
    code, _, err = run_cli(capsys, *encode_args(corpus_file, teacher_dir, f"s3://{s3_env}/busy"))
    one_line(code, err, f"s3://{s3_env}/busy", "not empty", "--force")
    code, _, err = run_cli(capsys, *encode_args(corpus_file, teacher_dir, f"s3://{s3_env}/h5", "--format", "hdf5"))
    one_line(code, err, "--format hdf5", "local folder")
    code, _, err = run_cli(capsys, "verify", "s3://no-such-bucket-tc/x")
    one_line(code, err, "no-such-bucket-tc")
    code, _, err = run_cli(capsys, "verify", f"s3://{s3_env}/nothing-here")
    one_line(code, err, f"s3://{s3_env}/nothing-here", "not a teacher cache")
    code, _, err = run_cli(capsys, "verify", "gopher://host/x")
    one_line(code, err, "gopher://host/x", "scheme")
    code, _, err = run_cli(capsys, "train-student", "--shards", f"s3://{s3_env}/nothing", "--out",
                           tmp_path / "s", "--cache-limit", "lots")
    one_line(code, err, "--cache-limit")


def test_a_corpus_in_the_bucket_is_encoded_like_its_local_copy(s3_env, capsys, tmp_path, corpus_file, teacher_dir,
                                                               monkeypatch):
    import gzip

    monkeypatch.setenv("TC_CACHE_DIR", str(tmp_path / "user-cache"))
    corpus = Store.open(f"s3://{s3_env}/corpus")
    lines = corpus_file.read_text().splitlines()
    corpus.put("part-0.txt.gz", gzip.compress(("\n".join(lines[:150]) + "\n").encode()))
    corpus.put("part-1.txt.gz", gzip.compress(("\n".join(lines[150:]) + "\n").encode()))
    corpus.put("notes.md", "not a corpus file\n")
    url = f"s3://{s3_env}/from-bucket"
    code, _, err = run_cli(capsys, *encode_args(f"s3://{s3_env}/corpus/*.txt.gz", teacher_dir, url))
    assert code == 0, err
    local = tmp_path / "local"
    assert run_cli(capsys, *encode_args(corpus_file, teacher_dir, str(local)))[0] == 0
    remote = json.loads(Store.open(url).read_bytes("manifest.json"))
    assert remote["rows"] == 300
    assert [s["sha256"] for s in remote["shards"]] == [
        s["sha256"] for s in json.loads((local / "manifest.json").read_text())["shards"]]
    code, _, err = run_cli(capsys, *encode_args(f"s3://{s3_env}/corpus/*.jsonl", teacher_dir, str(tmp_path / "x")))
    one_line(code, err, "matches no object")


def test_validation_rows_of_a_remote_cache_are_kept_in_its_mirror(remote_cache, tmp_path):
    import numpy as np

    from student.training.val_rows import read_rows, rows_file

    ids = np.array([3, 150, 299], dtype=np.int64)
    cache = open_cache(remote_cache, cache_dir=tmp_path / "c")
    texts, vectors = read_rows(cache, ids, "embedding")
    assert rows_file(cache, ids, "embedding").is_file()
    again = open_cache(remote_cache, cache_dir=tmp_path / "c")
    texts2, vectors2 = read_rows(again, ids, "embedding")
    assert texts2 == texts and np.array_equal(vectors2, vectors)
    assert again._shard_cache is None  # no shard was fetched the second time
    assert texts == open_cache(remote_cache, cache_dir=tmp_path / "d").texts(ids)


def test_a_run_on_a_remote_cache_resumes_to_the_uninterrupted_weights(remote_cache, capsys, tmp_path):
    from safetensors.numpy import load_file

    common = ["--shards", remote_cache, "--epochs", "2", "--cache-dir", str(tmp_path / "c"), "--quiet", "--seed",
              "5", "--batch-size", "32", "--checkpoint-every", "0"]
    assert run_cli(capsys, "train-student", "--out", tmp_path / "whole", *common)[0] == 0
    assert run_cli(capsys, "train-student", "--out", tmp_path / "part", *common, "--max-steps", "11")[0] == 0
    import shutil

    shutil.rmtree(tmp_path / "c")  # the resumed run fetches its shards again, as on a fresh machine
    code, _, err = run_cli(capsys, "train-student", "--out", tmp_path / "part", *common, "--resume")
    assert code == 0, err
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    part = load_file(tmp_path / "part" / "model.safetensors")
    for key in whole:  # the same batches after the resume as without it
        assert (whole[key] == part[key]).all(), key


def test_interleaved_shards_of_a_remote_cache_stay_pinned_while_read(remote_cache, tmp_path):
    from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
    from student.training.data import StreamingCacheDataset

    biggest = max(s.bytes for s in open_cache(remote_cache).manifest.shards)

    def dataset(limit: int) -> StreamingCacheDataset:
        cache = open_cache(remote_cache, cache_dir=tmp_path / str(limit), cache_limit=limit)
        tokenizer = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"], max_length=64)
        data = StreamingCacheDataset(cache, "embedding", tokenizer, batch_size=8, buffer_size=1, interleave=3)
        data.set_epoch(0)
        return data

    data = dataset(biggest * 3 + biggest // 2)  # room for the three open shards, not a fourth
    assert data.cache.pinned_shards == 3
    seen = []
    for batch in data:
        seen += batch.ids.tolist()
        held = sorted(data.cache._pinned)
        assert all((data.cache.directory / "shards" / data.cache.manifest.shards[i].file).is_file() for i in held)
    assert held == [0, 1, 2] and sorted(seen) == list(range(300))  # all three were read together, none evicted
    with pytest.raises(Exception, match="--cache-limit .*too small for the 3 shards held at once"):
        list(dataset(biggest * 2 + biggest // 2))  # three open shards need room for three
