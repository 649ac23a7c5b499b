"""Several teachers in one cache: `tc encode --teacher B --out CACHE` adds B as a side teacher (shards aligned with the
main ones), `tc info`/`tc verify` see it, and `tc train-student --teacher-column B | --targets A,B` learn from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from teacher_cache.encode.run import EncodeConfig, encode_corpus
from teacher_cache.shards import sha256_file
from tests.conftest import TOKENIZER_FILES, real_teacher_path
from tests.helpers import one_line, run_cli

STUDENT = ["--recipe", "static", "--emb-dim", "8", "--epochs", "1", "--batch-size", "16", "--val-rows", "30",
           "--max-rows", "200", "--checkpoint-every", "0", "--quiet"]


@pytest.fixture(scope="module")
def teacher_b(tmp_path_factory) -> Path:
    """A second tiny random BERT: 48 wide, another seed (so another weights hash and dim), the same tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("teacher_b") / "tiny-b"
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(real_teacher_path()) / name, folder / name)
    return folder


def add_b(cache: Path, teacher_b: Path, **kw):
    """`tc encode --teacher B --out CACHE` as a library call (no --corpus)."""
    return encode_corpus(EncodeConfig(out=str(cache), teacher=str(teacher_b), precision="fp32", quiet=True,
                                      max_length=64, **kw))


def main_digests(cache: Path) -> dict[str, str]:
    """sha256 of every main file (shards and recorded files), by name."""
    manifest = json.loads((cache / "manifest.json").read_text())
    names = [s["file"] for s in manifest["shards"]] + list(manifest["files"])
    return {n: sha256_file(cache / n) for n in names}


def side_entry(cache: Path) -> tuple[str, dict]:
    """The one side teacher of a cache: (name, its manifest entry)."""
    (name, entry), = json.loads((cache / "manifest.json").read_text())["teachers"].items()
    return name, entry


@pytest.fixture(scope="module")
def side_cache(tmp_path_factory, tiny_cache, teacher_b) -> Path:
    """A copy of tiny_cache (teacher A, 32-d, 3 shards) with B added as a side teacher."""
    cache = tmp_path_factory.mktemp("side") / "cache"
    shutil.copytree(tiny_cache, cache)
    before = main_digests(cache)
    add_b(cache, teacher_b)
    assert main_digests(cache) == before  # teacher A's shards and files untouched
    return cache


def test_side_teacher_is_added_beside_the_main_one(side_cache, tiny_cache):
    name, entry = side_entry(side_cache)
    manifest = json.loads((side_cache / "manifest.json").read_text())
    assert name == "tiny-b" and entry["folder"] == "teachers/tiny-b" and entry["complete"]
    assert entry["dim"] == 48 and entry["teacher_hash"] != manifest["teacher_hash"]
    assert [s["file"] for s in entry["shards"]] == [f"teachers/tiny-b/{s['file']}" for s in manifest["shards"]]
    assert [(s["rows"], s["id_start"], s["id_end"]) for s in entry["shards"]] == [
        (s["rows"], s["id_start"], s["id_end"]) for s in manifest["shards"]]
    assert "teachers/tiny-b/main_vocab_outputs.safetensors" in entry["files"]
    assert "teachers/tiny-b/token_outputs.safetensors" in entry["files"]
    assert "teachers/tiny-b/tokenizer/tokenizer.json" in entry["files"]
    assert not [n for n in manifest["files"] if n.startswith("teachers/")]  # not the main teacher's files
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(side_cache / entry["shards"][0]["file"]))).read_all()
    assert table.column_names == ["id", "embedding", "n_tokens"]  # no text
    from safetensors.numpy import load_file

    outputs = load_file(str(side_cache / "teachers/tiny-b/main_vocab_outputs.safetensors"))["main_vocab_outputs"]
    assert outputs.shape == (30522, 48) and np.isfinite(outputs).all()
    from teacher_cache import open_cache

    fingerprints = {open_cache(c).manifest.content_fingerprint() for c in (side_cache, tiny_cache)}
    assert len(fingerprints) == 1  # a reader of the main teacher is not told the cache changed


def test_info_lists_the_teachers_and_verify_checks_the_side_shards(side_cache, capsys):
    code, out, err = run_cli(capsys, "info", side_cache)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "tiny-b" in line or "tiny_teacher" in line]
    assert any("tiny-b" in line and "48" in line and "complete" in line for line in lines), out
    code, out, err = run_cli(capsys, "verify", side_cache)
    assert code == 0 and out.startswith("ok:") and "side teacher" in out, err


def test_verify_names_a_changed_side_shard(side_cache, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(side_cache, cache)
    _, entry = side_entry(cache)
    path = cache / entry["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", cache)
    assert code == 1 and str(path) in err


def test_rerun_has_nothing_to_do(side_cache, teacher_b, capsys):
    before = (side_cache / "manifest.json").read_text()
    code, _, err = run_cli(capsys, "encode", "--teacher", teacher_b, "--out", side_cache, "--precision", "fp32",
                           "--max-length", "64")
    assert code == 0 and "nothing to do" in err, err
    assert json.loads(before)["teachers"] == json.loads((side_cache / "manifest.json").read_text())["teachers"]


def test_an_interrupted_side_encode_resumes_to_the_same_shards(side_cache, tiny_cache, teacher_b, tmp_path,
                                                               monkeypatch):
    from teacher_cache.side_teachers import SideShardWriter

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    real, calls = SideShardWriter.write_named, []

    def dies_at_the_second(self, name, rows):
        calls.append(name)
        if len(calls) == 2:
            (self.directory / (name + ".tmp")).write_bytes(b"half a shard")  # what a kill leaves
            raise KeyboardInterrupt  # as a SIGINT would, mid-shard
        return real(self, name, rows)

    monkeypatch.setattr(SideShardWriter, "write_named", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        add_b(cache, teacher_b)
    _, entry = side_entry(cache)
    assert len(entry["shards"]) == 1 and not entry["complete"]
    monkeypatch.setattr(SideShardWriter, "write_named", real)
    add_b(cache, teacher_b)
    _, done = side_entry(cache)
    _, expected = side_entry(side_cache)
    assert [s["sha256"] for s in done["shards"]] == [s["sha256"] for s in expected["shards"]]
    assert done["shards"][0] == entry["shards"][0]  # the complete side shard was kept, not encoded again
    assert not list((cache / "teachers/tiny-b").glob("*.tmp"))


def test_sigkill_mid_side_encode_then_rerun(side_cache, tiny_cache, teacher_b, tmp_path):
    import signal
    import time

    from tests.helpers import tc_subprocess

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    proc = tc_subprocess("encode", "--teacher", teacher_b, "--out", cache, "--precision", "fp32", "--max-length",
                         "64", "--quiet")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        data = json.loads((cache / "manifest.json").read_text())
        if any(t.get("shards") for t in data.get("teachers", {}).values()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    add_b(cache, teacher_b)
    _, done = side_entry(cache)
    _, expected = side_entry(side_cache)
    assert [s["sha256"] for s in done["shards"]] == [s["sha256"] for s in expected["shards"]]
    assert {n: r["sha256"] for n, r in done["files"].items()} == {n: r["sha256"] for n, r in expected["files"].items()}


def test_read_targets(side_cache):
    from teacher_cache import open_cache

    cache = open_cache(side_cache)
    main, side = cache.teacher_names()
    assert side == "tiny-b" and cache.target_dim([main, side]) == 80
    both = cache.read_targets(0, [main, side])
    assert both.shape == (100, 80) and both.dtype == np.float32
    assert np.allclose(np.linalg.norm(both[:, :32], axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(both[:, 32:], axis=1), 1, atol=1e-5)
    alone = cache.read_targets(1, [side])
    assert alone.shape == (100, 48)
    from teacher_cache.shards import read_shard, vectors_of

    _, entry = side_entry(side_cache)
    stored = vectors_of(read_shard(side_cache / entry["shards"][1]["file"]), "embedding")
    assert np.array_equal(alone, stored)  # one teacher: its vectors as stored, not normalised again
    assert np.array_equal(cache.read_targets(2, [main]), vectors_of(cache.read_shard(2), "embedding"))


def test_targets_a_and_b_train_a_wider_student(side_cache, tmp_path, capsys):
    from teacher_cache import open_cache

    main, side = open_cache(side_cache).teacher_names()
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "train-student", "--shards", side_cache, "--out", out, "--targets",
                           f"{main},{side}", *STUDENT)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["out_dim"] == 80
    assert [t["name"] for t in config["teacher"]["targets"]] == [main, side]
    assert [t["dim"] for t in config["teacher"]["targets"]] == [32, 48]
    args = json.loads((out / "training_args.json").read_text())
    assert args["targets"] == f"{main},{side}" and [t["name"] for t in args["cache"]["targets"]] == [main, side]


def test_teacher_column_b_trains_on_b_alone(side_cache, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "train-student", "--shards", side_cache, "--out", out, "--teacher-column",
                           "tiny-b", *STUDENT)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["out_dim"] == 48 and config["teacher"]["targets"][0]["name"] == "tiny-b"


def test_teacher_column_main_is_todays_training(side_cache, tmp_path):
    from student.training.train import TrainConfig, train
    from teacher_cache import open_cache

    main = open_cache(side_cache).teacher_names()[0]
    args = {"recipe": "static", "emb_dim": 8, "epochs": 1, "batch_size": 16, "val_rows": 30, "quiet": True,
            "checkpoint_every": 0, "max_rows": 200}
    plain = train(TrainConfig(shards=str(side_cache), out=str(tmp_path / "a"), **args))
    named = train(TrainConfig(shards=str(side_cache), out=str(tmp_path / "b"), teacher_column=main, **args))
    assert plain["final"] == named["final"]
    from safetensors.numpy import load_file  # tensor for tensor: the file's metadata order is not fixed

    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_targets_are_one_line(side_cache, tmp_path, capsys):
    from teacher_cache import open_cache

    main = open_cache(side_cache).teacher_names()[0]
    base = ["train-student", "--shards", side_cache, "--out", tmp_path / "s", *STUDENT]
    code, _, err = run_cli(capsys, *base, "--targets", f"{main},nobody")
    one_line(code, err, "--targets", "nobody", "tiny-b", main)
    code, _, err = run_cli(capsys, *base, "--teacher-column", "nobody")
    one_line(code, err, "--teacher-column", "nobody", "tiny-b")
    code, _, err = run_cli(capsys, *base, "--teacher-column", main, "--targets", f"{main},tiny-b")
    one_line(code, err, "--teacher-column", "--targets")
    assert not (tmp_path / "s").exists()


def test_a_newer_main_version_leaves_the_side_teacher_behind(side_cache, teacher_dir, teacher_b, tmp_path,
                                                             corpus_file, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(side_cache, cache)
    grown = tmp_path / "corpus.txt"
    extra = Path(__file__).resolve().parent.parent / "data" / "sample_corpus.txt"
    grown.write_text(corpus_file.read_text() + "\n".join(extra.read_text().splitlines()[300:350]) + "\n")
    code, _, err = run_cli(capsys, "encode", "--teacher", teacher_b, "--out", cache, "--corpus", grown)
    one_line(code, err, "--corpus", "main teacher first")
    encode_corpus(EncodeConfig(corpus=[str(grown)], out=str(cache), teacher=str(teacher_dir), pooling=["mean", "cls"],
                               shard_size=100, max_length=64, quiet=True, precision="fp32"))
    code, out, _ = run_cli(capsys, "info", cache)
    assert "3 of 4 shards" in out, out
    code, _, err = run_cli(capsys, "train-student", "--shards", cache, "--out", tmp_path / "s", "--teacher-column",
                           "tiny-b", *STUDENT)
    one_line(code, err, "tiny-b", "tc encode --teacher")
    _, before = side_entry(cache)
    add_b(cache, teacher_b)  # adds the new main shard's side shard only
    _, after = side_entry(cache)
    assert after["shards"][:3] == before["shards"][:3] and len(after["shards"]) == 4 and after["complete"]
    code, out, err = run_cli(capsys, "verify", cache)
    assert code == 0, err


def test_a_second_cache_of_the_same_two_teachers_reuses_the_vocabulary_outputs(side_cache, tiny_cache, teacher_b,
                                                                              tmp_path, monkeypatch):
    import teacher_cache.encode.side_teacher as side_module

    calls = []
    original = side_module.main_vocab_outputs
    monkeypatch.setattr(side_module, "main_vocab_outputs", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = tmp_path / "again"
    shutil.copytree(tiny_cache, again)
    add_b(again, teacher_b)
    assert calls == []  # kept in the user cache by side_cache's encode, per (side teacher, main tokenizer)
    name = side_entry(again)[0]
    file = f"teachers/{name}/main_vocab_outputs.safetensors"
    assert sha256_file(again / file) == sha256_file(side_cache / file)
