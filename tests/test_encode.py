"""tc encode: cache layout, readers without project code, poolings, formats, corpus kinds."""

from __future__ import annotations

import gzip
import json

import h5py
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from teacher_cache import open_cache
from teacher_cache.encode.run import EncodeConfig, encode_corpus
from tests.helpers import run_cli


def encode(tmp_path, teacher_dir, corpus, name="out", **kwargs):
    out = tmp_path / name
    opts = dict(corpus=[str(c) for c in (corpus if isinstance(corpus, list) else [corpus])], out=out,
                teacher=str(teacher_dir), quiet=True, precision="fp32", max_length=64)
    opts.update(kwargs)
    return out, encode_corpus(EncodeConfig(**opts))


def reference_vectors(teacher_dir, texts, max_length=64):
    """Unbatched, unsorted transformers forward pass: what each pooling must equal."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModel.from_pretrained(teacher_dir).eval()
    means, clss = [], []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            means.append(hidden.mean(0).numpy())
            clss.append(hidden[0].numpy())
    return np.stack(means), np.stack(clss)


def test_cache_layout_and_plain_readers(tiny_cache, corpus_file):
    manifest = json.loads((tiny_cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 300 and manifest["dim"] == 32
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow"]
    assert [(s["id_start"], s["id_end"]) for s in manifest["shards"]] == [(0, 99), (100, 199), (200, 299)]
    for key in ("teacher", "teacher_hash", "pooling", "max_length", "dtype", "normalize", "corpus_fingerprint"):
        assert manifest[key] not in (None, "")
    # plain pyarrow, no project code
    table = pa.ipc.open_file(pa.memory_map(str(tiny_cache / "shard-00001.arrow"))).read_all()
    assert table.schema.names == ["id", "text", "embedding", "embedding_cls", "n_tokens", "key"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert table.column("id").to_pylist() == list(range(100, 200))
    assert table.column("text").to_pylist() == corpus_file.read_text().splitlines()[100:200]
    # polars, lazily
    frame = pl.scan_ipc(str(tiny_cache / "shard-*.arrow")).select(pl.len(), pl.col("id").max()).collect()
    assert frame.row(0) == (300, 299)
    assert (tiny_cache / "tokenizer" / "tokenizer.json").exists()
    assert open_cache(tiny_cache).token_embeddings().shape == (30522, 32)


def test_vectors_equal_unbatched_forward_for_each_pooling(tiny_cache, teacher_dir, corpus_file):
    texts = corpus_file.read_text().splitlines()[:40]
    mean, cls = reference_vectors(teacher_dir, texts)
    cache = open_cache(tiny_cache)
    np.testing.assert_allclose(cache.vectors("mean")[:40], mean, atol=2e-5)
    np.testing.assert_allclose(cache.vectors("cls")[:40], cls, atol=2e-5)


def test_reader_batches_shuffled_cover_every_row_once(tiny_cache):
    cache = open_cache(tiny_cache)
    seen = np.concatenate([b.ids for b in cache.iter_batches(batch_size=37, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == list(range(300))
    assert seen.tolist() != list(range(300))
    again = np.concatenate([b.ids for b in cache.iter_batches(batch_size=37, shuffle=True, seed=3)])
    assert seen.tolist() == again.tolist()
    batch = next(cache.iter_batches(batch_size=5, column="cls"))
    np.testing.assert_array_equal(batch.vectors, cache.vectors("cls")[:5])
    assert batch.texts == cache.texts(np.arange(5))
    assert cache.lazy().select(pl.len()).collect().item() == 300


def test_hdf5_format_matches_arrow(tmp_path, teacher_dir, corpus_file, tiny_cache):
    out, manifest = encode(tmp_path, teacher_dir, corpus_file, format="hdf5", shard_size=100,
                           pooling=["mean", "cls"])
    assert manifest.shards[0].file == "shard-00000.h5"
    with h5py.File(out / "shard-00002.h5") as h5:
        assert h5["embedding"].shape == (100, 32) and h5["id"][0] == 200
    np.testing.assert_allclose(open_cache(out).vectors(), open_cache(tiny_cache).vectors(), atol=1e-6)


def test_float16_and_fixed_batch_size(tmp_path, teacher_dir, corpus_file, tiny_cache):
    out, _ = encode(tmp_path, teacher_dir, corpus_file, dtype="float16", batch_size=7, pooling=["mean", "cls"])
    table = pa.ipc.open_file(str(out / "shard-00000.arrow")).read_all()
    assert table.schema.field("embedding").type.value_type == pa.float16()
    np.testing.assert_allclose(open_cache(out).vectors(), open_cache(tiny_cache).vectors(), atol=2e-3)


def test_blank_lines_gz_glob_and_several_files(tmp_path, teacher_dir, corpus_file):
    lines = corpus_file.read_text().splitlines()[:30]
    with gzip.open(tmp_path / "a.txt.gz", "wt") as fh:
        fh.write("\n".join(lines[:10]) + "\n\n   \n")
    (tmp_path / "b.txt").write_text("\n".join(lines[10:]) + "\n")
    out, manifest = encode(tmp_path, teacher_dir, [str(tmp_path / "*.t*")])
    cache = open_cache(out)
    assert len(cache) == 30 and cache.texts() == lines
    assert manifest.extra["corpus_stats"]["blank_lines"] == 2


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_table_corpora_with_text_column(tmp_path, teacher_dir, corpus_file, kind):
    texts = corpus_file.read_text().splitlines()[:25]
    frame = pl.DataFrame({"n": list(range(25)), "sentence": texts})
    path = tmp_path / f"corpus.{kind}"
    {"jsonl": frame.write_ndjson, "parquet": frame.write_parquet, "csv": frame.write_csv}[kind](path)
    out, _ = encode(tmp_path, teacher_dir, path, text_column="sentence")
    assert open_cache(out).texts() == texts


def test_real_teacher_matches_sentence_transformers(tmp_path, capsys):
    """The bundled all-MiniLM-L6-v2: cache vectors equal SentenceTransformer.encode (cosine > 0.999)."""
    from sentence_transformers import SentenceTransformer

    from tests.conftest import SAMPLE, real_teacher_path

    texts = SAMPLE.read_text().splitlines()[:96]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(texts) + "\n")
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    table = pa.ipc.open_file(str(tmp_path / "out" / "shard-00000.arrow")).read_all()
    ours = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert ours.shape == (96, 384)
    reference = SentenceTransformer(real_teacher_path(), device="cpu").encode(texts, batch_size=64)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["normalize"] is True and manifest["pooling"] == ["mean"] and manifest["dim"] == 384


def test_a_cache_cut_at_max_rows_grows_into_the_fresh_full_cache(tmp_path, teacher_dir, corpus_file, tiny_cache):
    from teacher_cache.base.errors import CacheMismatchError
    from tests.helpers import shard_digests

    grown, first = encode(tmp_path, teacher_dir, corpus_file, "grown", pooling=["mean"], shard_size=100,
                          max_rows=200)
    assert first.rows == 200
    _, manifest = encode(tmp_path, teacher_dir, corpus_file, "grown", pooling=["mean"], shard_size=100)
    fresh, _ = encode(tmp_path, teacher_dir, corpus_file, "fresh", pooling=["mean"], shard_size=100)
    assert manifest.complete and manifest.rows == 300
    assert shard_digests(grown) == shard_digests(fresh)  # the same shards a fresh full run writes
    # a cut inside a shard grows too: the rows past it are new texts, encoded into a new version's shards
    encode(tmp_path, teacher_dir, corpus_file, "ragged", pooling=["mean"], shard_size=100, max_rows=150)
    ragged, manifest = encode(tmp_path, teacher_dir, corpus_file, "ragged", pooling=["mean"], shard_size=100)
    assert [s.rows for s in manifest.shards] == [100, 50, 100, 50]
    assert [(v.version, v.rows, v.added, v.removed) for v in manifest.versions] == [(1, 150, 150, 0), (2, 300, 150, 0)]
    assert sorted(open_cache(ragged).texts()) == sorted(open_cache(fresh).texts())
    with pytest.raises(CacheMismatchError, match="shard_size"):  # a setting that defines the cache still refuses
        encode(tmp_path, teacher_dir, corpus_file, "ragged", pooling=["mean"], shard_size=50)
