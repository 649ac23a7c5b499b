"""The student frontier's pieces: per-token outputs in the cache, losses, SIF weights, static path, recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from student import Student, StudentConfig
from student.training.init import init_from_outputs, sif_weights, token_frequencies
from student.training.losses import loss_fn, parse_loss
from student.training.recipes import RECIPE_KNOBS, RECIPES
from student.training.train import TrainConfig, train
from student.training.train_config import recipe_config
from teacher_cache import open_cache
from teacher_cache.base.errors import CacheError
from tests.helpers import error_lines, run_cli


def test_the_cache_carries_each_tokens_teacher_output(tiny_cache, teacher_dir):
    from transformers import AutoModel

    outputs = open_cache(tiny_cache).token_outputs()
    model = AutoModel.from_pretrained(teacher_dir).eval()
    assert outputs.shape == (30522, 32)
    for token in (0, 101, 2023, 30521):  # [PAD], [CLS], a word, the last id
        ids = torch.tensor([[101, token, 102]])
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)[0]
        np.testing.assert_allclose(outputs[token], expected.numpy(), atol=2e-3, rtol=1e-2)  # stored as float16


def test_rerunning_encode_adds_token_outputs_to_an_older_complete_cache(tiny_cache, tmp_path, capsys, teacher_dir,
                                                                        corpus_file):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    _forget_token_outputs(old)
    assert open_cache(old).token_outputs() is None
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus_file, "--out", old, "--teacher", teacher_dir,
                           "--pooling", "mean,cls", "--shard-size", 100, "--max-length", 64, "--precision", "fp32")
    assert code == 0, err
    assert "token_outputs.safetensors" in err
    np.testing.assert_array_equal(open_cache(old).token_outputs(), open_cache(tiny_cache).token_outputs())


def test_token_outputs_are_computed_once_per_teacher_and_copied_into_later_caches(tiny_cache, tmp_path, capsys,
                                                                                 teacher_dir, corpus_file,
                                                                                 monkeypatch):
    import teacher_cache.encode.token_outputs as token_outputs

    manifest = open_cache(tiny_cache).manifest
    kept = token_outputs.shared_copy_path(manifest.teacher_hash)
    assert kept.is_file()  # the tiny cache's encode kept them in the (scratch) user cache
    calls = []
    real = token_outputs.compute_token_outputs
    monkeypatch.setattr(token_outputs, "compute_token_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = ["--teacher", teacher_dir, "--shard-size", 100, "--max-length", 64, "--precision", "fp32", "--max-rows", 50]
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus_file, "--out", tmp_path / "second", *args)
    assert code == 0, err
    assert calls == []  # copied, not computed
    expected = open_cache(tiny_cache).token_outputs()
    np.testing.assert_array_equal(open_cache(tmp_path / "second").token_outputs(), expected)
    kept.write_bytes(b"not a safetensors file")  # a damaged kept copy is computed again and replaced
    code, _, err = run_cli(capsys, "encode", "--corpus", corpus_file, "--out", tmp_path / "third", *args)
    assert code == 0, err
    assert calls == [1]
    np.testing.assert_array_equal(open_cache(tmp_path / "third").token_outputs(), expected)
    assert token_outputs.load_shared_copy(manifest.teacher_hash, (30522, 32)) is not None
    with pytest.raises(ValueError):
        token_outputs.shared_copy_path("../../etc")


def test_losses_are_zero_at_the_teacher_and_positive_away_from_it():
    torch.manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    other = torch.randn(8, 16)
    for name in ("mse", "cosine", "relational"):
        assert float(loss_fn(target.clone(), target, name, 0.05)) == pytest.approx(0.0, abs=1e-5)
        assert float(loss_fn(other, target, name, 0.05)) > 1e-3
    # contrastive is minimal, not zero, at the teacher: every positive beats the negatives
    assert float(loss_fn(target.clone(), target, "contrastive", 0.05)) < float(loss_fn(other, target, "contrastive",
                                                                                         0.05))
    both = loss_fn(other, target, "cosine+relational", 0.05)
    assert float(both) == pytest.approx(float(loss_fn(other, target, "cosine", 0.05) +
                                              loss_fn(other, target, "relational", 0.05)), rel=1e-5)


def test_a_bad_loss_name_is_one_line(tiny_cache, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown loss 'cosin'"):
        parse_loss("cosine+cosin")
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "s",
                           "--loss", "mse+huber")
    assert code != 0 and len(error_lines(err)) == 1 and "--loss mse+huber" in err and "Traceback" not in err


def test_sif_weights_fall_with_frequency():
    freq = token_frequencies([[5, 5, 5, 7], [5, 9]], vocab_size=10)
    assert freq[5] == pytest.approx(4 / 6) and freq[0] == 0 and freq.sum() == pytest.approx(1.0)
    w = sif_weights(freq, a=1e-3)
    assert w[0] == 1.0 and w[5] < w[7] < 1.0


def test_a_static_student_starts_at_the_weighted_mean_of_centred_token_outputs():
    torch.manual_seed(0)
    outputs = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    weights = np.linspace(0.1, 1.0, 50).astype(np.float32)
    centred = outputs - outputs.mean(0)
    ids = torch.tensor([[3, 7, 11, 0], [4, 5, 0, 0]])
    lengths = torch.tensor([3, 2])
    for emb_dim, token_weights in ((8, True), (8, False), (6, True)):
        cfg = StudentConfig(arch="static", vocab_size=50, emb_dim=emb_dim, out_dim=8, token_weights=token_weights)
        student = Student(cfg, {"tokenizer.json": _tokenizer_json()})
        init_from_outputs(student.encoder, outputs, weights)
        got = student(ids, lengths).detach().numpy()
        expected = np.stack([(centred[[3, 7, 11]] * weights[[3, 7, 11], None]).mean(0),
                             (centred[[4, 5]] * weights[[4, 5], None]).mean(0)])
        if emb_dim < 8:  # PCA keeps the top components: close, not equal
            assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.9
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "bilstm"])
def test_a_student_with_a_static_path_starts_as_that_static_student(arch):
    outputs = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    weights = np.linspace(0.1, 1.0, 50).astype(np.float32)
    ids, lengths = torch.tensor([[3, 7, 11, 0], [4, 5, 0, 0]]), torch.tensor([3, 2])
    students = []
    for name in ("static", arch):
        cfg = StudentConfig(arch=name, vocab_size=50, emb_dim=8, hidden=4, out_dim=8, token_weights=True,
                            static_path=name != "static", **({"kernel_sizes": [3]} if name == "cnn" else {}))
        student = Student(cfg, {"tokenizer.json": _tokenizer_json()})
        init_from_outputs(student.encoder, outputs, weights)
        students.append(student(ids, lengths).detach())
    torch.testing.assert_close(students[0], students[1])


def test_a_bilstm_with_a_static_path_trains_from_where_the_static_student_starts(tiny_cache, tmp_path):
    common = dict(shards=str(tiny_cache), epochs=1, val_rows=30, quiet=True, checkpoint_every=0, emb_dim=16,
                  batch_size=32, init_embeddings="outputs", token_weights=True, loss="cosine")
    static = train(TrainConfig(arch="static", out=str(tmp_path / "static"), **common))
    bilstm = train(TrainConfig(arch="bilstm", hidden=8, static_path=True, pooling="mean", out=str(tmp_path / "b"),
                               **common))
    # the same start but for [CLS]/[SEP], which a BiLSTM reads and a static student drops (model2vec's way)
    assert bilstm["initial"]["val_cosine"] == pytest.approx(static["initial"]["val_cosine"], abs=0.005)
    assert bilstm["final"]["val_cosine"] > bilstm["initial"]["val_cosine"]
    reloaded = Student.from_pretrained(tmp_path / "b")
    assert reloaded.config.static_path and reloaded.encoder.static_proj is not None
    assert reloaded.encode(["a sentence"]).shape == (1, 32)


def test_a_static_path_is_refused_on_a_static_student(tiny_cache, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "s", "--arch",
                           "static", "--static-path")
    assert code != 0 and error_lines(err) == ["error: --static-path: --arch cnn or bilstm only, not static"]


def test_static_students_drop_special_tokens_like_model2vec():
    cfg = StudentConfig(arch="static", vocab_size=50)
    assert cfg.add_special_tokens is False
    assert StudentConfig(arch="bilstm").add_special_tokens is True


def test_each_recipe_trains_on_a_tiny_cache(tiny_cache, tmp_path):
    for name in RECIPES:
        cfg = recipe_config(name, shards=str(tiny_cache), out=str(tmp_path / name), epochs=1, val_rows=30,
                            quiet=True, checkpoint_every=0, emb_dim=16, hidden=8, batch_size=32)
        metrics = train(cfg)
        assert metrics["final"]["val_cosine"] > metrics["initial"]["val_cosine"], name
        args = json.loads((tmp_path / name / "training_args.json").read_text())
        assert args["recipe"] == name and args["arch"] == RECIPES[name]["arch"]
        Student.from_pretrained(tmp_path / name).encode(["a sentence"])


def test_recipe_knobs_are_overridable_and_another_arch_drops_the_recipes_sizes():
    cfg = recipe_config("static", lr=0.5, shards="x")
    assert cfg.lr == 0.5 and cfg.arch == "static" and cfg.token_weights and cfg.init_embeddings == "outputs"
    other = recipe_config("static", arch="bilstm")
    assert other.arch == "bilstm" and not other.token_weights and other.emb_dim is None
    other.validate()
    assert recipe_config(None).recipe == "static"


def test_the_cli_uses_the_static_recipe_by_default_and_refuses_a_bad_recipe(tiny_cache, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "s", "--epochs", 1,
                           "--val-rows", 30, "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["arch"] == "static" and config["token_weights"] is True
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "t", "--recipe",
                           "fastest")
    assert code != 0 and error_lines(err) == ["error: --recipe fastest: unknown recipe; choose one of "
                                              "static, compact, paper, paper-512"]


def test_outputs_init_needs_a_cache_that_carries_them(tiny_cache, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    _forget_token_outputs(old)
    with pytest.raises(CacheError, match="carries no token outputs"):
        train(TrainConfig(shards=str(old), out=str(tmp_path / "s"), arch="static", init_embeddings="outputs",
                          val_rows=30, quiet=True))


def _tokenizer_json() -> bytes:
    """The real word-piece tokenizer's tokenizer.json."""
    from pathlib import Path

    from tests.conftest import real_teacher_path

    return (Path(real_teacher_path()) / "tokenizer.json").read_bytes()


def _forget_token_outputs(cache_dir) -> None:
    """Make `cache_dir` look like a cache written before token outputs existed (file and manifest entry gone)."""
    (cache_dir / "token_outputs.safetensors").unlink()
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest.get("files", {}).pop("token_outputs.safetensors", None)
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))


def test_the_library_default_is_the_cli_default(tiny_cache, tmp_path, capsys):
    """train(TrainConfig(...)) and `tc train-student` with the same options train the same student (one default)."""
    small = {"epochs": 1, "val_rows": 30, "emb_dim": 16, "batch_size": 32, "checkpoint_every": 0, "quiet": True}
    train(TrainConfig(shards=str(tiny_cache), out=str(tmp_path / "lib"), **small))
    flags = [x for k, v in small.items() if k != "quiet" for x in (f"--{k.replace('_', '-')}", v)]
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "cli", *flags,
                           "--quiet")
    assert code == 0, err
    lib, cli = (json.loads((tmp_path / d / "training_args.json").read_text()) for d in ("lib", "cli"))
    for args in (lib, cli):
        args.pop("out"), args.pop("created", None)
    assert lib == cli and lib["recipe"] == "static" and lib["arch"] == "static"
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("lib", "cli"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(TrainConfig.__dataclass_fields__[k].default is None for k in RECIPE_KNOBS)  # the recipe fills them
