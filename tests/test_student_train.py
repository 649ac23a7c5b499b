"""Training: it learns, it writes a loadable student folder, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from student import Student
from student.training.optim import adamw, clip_gradients, lr_factor, param_groups
from student.training.train import TrainConfig, train
from teacher_cache import open_cache
from teacher_cache.base.errors import CacheError, UserError


def config(cache, out, **kw) -> TrainConfig:
    """A tiny, quiet run: embedding 16, hidden 16, 30 validation rows, batch 16 (17 steps per epoch)."""
    args = {"recipe": "paper-512", "emb_dim": 16, "hidden": 16, "epochs": 1, "batch_size": 16, "lr": 1e-2,
            "val_rows": 30, "quiet": True, "checkpoint_every": 0} | kw
    return TrainConfig(shards=str(cache), out=str(out), **args)


def test_one_epoch_learns_and_writes_the_student_folder(tiny_cache, tmp_path):
    out = tmp_path / "s"
    metrics = train(config(tiny_cache, out))
    assert metrics["final"]["val_mse"] < 0.5 * metrics["initial"]["val_mse"]
    assert metrics["final"]["val_cosine"] > metrics["initial"]["val_cosine"]
    assert 0 <= metrics["final"]["knn@10"] <= 1
    assert metrics["rows_seen"] == 270 and metrics["steps"] == 17 and metrics["val_rows"] == 30
    names = {p.name for p in out.iterdir()}
    assert names >= {"config.json", "model.safetensors", "tokenizer.json", "training_args.json", "metrics.json",
                     "README.md"}
    assert "checkpoint" not in names  # removed once the student is written
    args = json.loads((out / "training_args.json").read_text())
    assert args["target_column"] == "embedding" and args["emb_dim"] == 16 and args["sparse_embeddings_used"]
    card = (out / "README.md").read_text()
    manifest = open_cache(tiny_cache).manifest
    assert manifest.corpus_fingerprint[:12] in card and "270" in card and "val_mse" in card
    student = Student.from_pretrained(out)
    texts = open_cache(tiny_cache).texts(np.arange(50))
    vectors = student.encode(texts, batch_size=8)
    assert vectors.shape == (50, 32)
    np.testing.assert_allclose(student.encode(texts[::-1], batch_size=50)[::-1], vectors, atol=1e-5)


@pytest.mark.parametrize("arch,loss,column", [("cnn", "cosine", "cls"), ("static", "contrastive", "embedding"),
                                               ("bilstm", "mse", "cls")])
def test_other_students_losses_and_targets(tiny_cache, tmp_path, arch, loss, column):
    metrics = train(config(tiny_cache, tmp_path / "s", arch=arch, loss=loss, target_column=column,
                           init_embeddings="random", sparse_embeddings="no", lr=3e-3))
    assert metrics["final"]["val_cosine"] > metrics["initial"]["val_cosine"]
    args = json.loads((tmp_path / "s" / "training_args.json").read_text())
    assert args["target_column"] == ("embedding_cls" if column == "cls" else "embedding")
    assert not args["sparse_embeddings_used"]


@pytest.mark.parametrize("stop,sparse,workers,interleave", [(5, "yes", 0, 1), (17, "yes", 0, 1), (23, "no", 0, 1),
                                                         (9, "yes", 2, 1), (11, "yes", 0, 3)])
def test_resume_equals_uninterrupted(tiny_cache, tmp_path, stop, sparse, workers, interleave):
    knobs = {"epochs": 2, "eval_every": 7, "sparse_embeddings": sparse, "buffer_size": 32, "pool_batches": 4,
             "num_workers": workers, "interleave_shards": interleave}
    whole = train(config(tiny_cache, tmp_path / "whole", **knobs))
    part = train(config(tiny_cache, tmp_path / "part", max_steps=stop, **knobs))
    assert part["stopped"] and part["step"] == stop
    assert (tmp_path / "part" / "checkpoint" / "checkpoint.pt").exists()
    assert not (tmp_path / "part" / "model.safetensors").exists()
    resumed = train(config(tiny_cache, tmp_path / "part", resume=True, **knobs))
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]]
    for x, y in zip(resumed["history"], whole["history"], strict=True):
        assert x["val_mse"] == pytest.approx(y["val_mse"], rel=1e-5)
    assert resumed["rows_seen"] == whole["rows_seen"] == 540


def test_output_folder_rules(tiny_cache, tmp_path):
    out = tmp_path / "s"
    train(config(tiny_cache, out, max_steps=3))
    with pytest.raises(UserError, match="earlier training run"):
        train(config(tiny_cache, out))
    with pytest.raises(CacheError, match="other settings"):
        train(config(tiny_cache, out, resume=True, lr=5e-3))
    (out / "notes.txt").write_text("mine")
    train(config(tiny_cache, out, force=True))
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only this command's own files
    assert (out / "model.safetensors").exists() and not (out / "checkpoint").exists()


def test_no_validation_rows(tiny_cache, tmp_path):
    metrics = train(config(tiny_cache, tmp_path / "s", val_rows=0, arch="static"))
    assert metrics["final"] == {} and metrics["rows_seen"] == 300
    assert "Validation (0 held-out" in (tmp_path / "s" / "README.md").read_text()


def test_schedule_and_clipping():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1)
    def lr_at(step, total, warmup, cfg):
        return cfg.lr * lr_factor(step, total, warmup, cfg.decay, cfg.min_lr_ratio)

    assert lr_at(0, 100, 10, cfg) == pytest.approx(0.1) and lr_at(9, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(0.1) and lr_at(55, 100, 10, cfg) == pytest.approx(0.55)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Parameter(torch.ones(4))
    (emb(torch.tensor([1, 1, 2])).sum() * 10 + (dense * 10).sum()).backward()
    norm = clip_gradients([emb.weight, dense], 1.0)
    assert norm == pytest.approx(float(np.sqrt(3 * 20**2 + 3 * 10**2 + 4 * 10**2)), rel=1e-5)
    total = float(emb.weight.grad.coalesce()._values().norm() ** 2 + dense.grad.norm() ** 2) ** 0.5
    assert total == pytest.approx(1.0, rel=1e-4)


def test_fused_adamw_makes_the_per_tensor_loop_update():
    """adamw() fuses the step on CPU; its weights after a few steps equal the unfused AdamW's."""
    torch.manual_seed(0)
    start = [torch.randn(50, 8), torch.randn(8)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(3)]

    def run(make) -> list[torch.Tensor]:
        weights = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(param_groups(weights, 0.01, lr=1e-2))
        for step in grads:
            for w, g in zip(weights, step, strict=True):
                w.grad = g.clone()
            opt.step()
        return [w.detach() for w in weights]

    fused = adamw(param_groups([torch.nn.Parameter(w.clone()) for w in start], 0.01, lr=1e-2))
    assert fused.defaults["fused"]
    for a, b in zip(run(adamw), run(torch.optim.AdamW), strict=True):
        assert not torch.equal(a, start[0] if a.dim() == 2 else start[1])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
