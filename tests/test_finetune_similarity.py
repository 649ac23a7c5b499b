"""Similarity tasks fine-tune the encoder through the cosine head; --select keeps the best epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from finetune.config import FinetuneConfig
from finetune.fit import cosent_loss, task_loss
from finetune.prepare import prepare, selection_rows
from student import Student
from teacher_cache import open_cache
from tests.helpers import error_lines, run_cli


def brute_force_cosent(scores: list[float], gold: list[float], scale: float = 20.0) -> float:
    """log(1 + sum over (i, j) with gold_i < gold_j of exp(scale * (s_i - s_j))), by loops."""
    total = 1.0
    for si, gi in zip(scores, gold, strict=True):
        for sj, gj in zip(scores, gold, strict=True):
            if gi < gj:
                total += float(np.exp(scale * (si - sj)))
    return float(np.log(total))


def test_cosent_matches_its_definition_and_only_sees_the_order():
    torch.manual_seed(0)
    scores, gold = torch.rand(7) * 0.2, torch.tensor([0.0, 1.0, 1.0, 2.5, 3.0, 4.0, 5.0])
    assert cosent_loss(scores, gold).item() == pytest.approx(brute_force_cosent(scores.tolist(), gold.tolist()),
                                                             rel=1e-5)
    assert torch.allclose(cosent_loss(scores, gold), cosent_loss(scores, gold * 3 + 1))  # order only
    ranked = torch.linspace(-1, 1, 7)  # scores in gold's order, far apart: nearly no loss
    assert cosent_loss(ranked, gold).item() < 0.01 < cosent_loss(ranked.flip(0), gold).item()


def test_cosine_head_loss_scales_scores_and_keeps_kd_per_example():
    torch.manual_seed(0)
    out, gold, teacher = torch.rand(6, 1) * 5, torch.tensor([1.0, 4.0, 2.0, float("nan"), 3.0, 0.5]), \
        torch.rand(6, 1) * 5
    mse = task_loss(out, gold, None, 0.0, True, cosent=False, span=5.0)
    labelled = ~torch.isnan(gold)
    expected = torch.where(labelled, ((out[:, 0] - torch.nan_to_num(gold)) / 5) ** 2, 0).mean()
    assert torch.allclose(mse, expected)
    loss = task_loss(out, gold, teacher, 0.25, True, cosent=True, span=5.0)
    soft = (((out - teacher) / 5) ** 2)[:, 0]
    kd = torch.where(labelled, 0.25 * soft, soft).mean()
    assert torch.allclose(loss, kd + 0.75 * cosent_loss(out[labelled, 0] / 5, gold[labelled] / 5))


def test_similarity_finetune_keeps_a_sentence_encoder(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "stsb", "--out", out,
                                "--data-dir", glue_dir, "--max-train-rows", "200", "--max-eval-rows", "40", "--epochs",
                                "1", "--select", "last", "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head"] == "cosine" and metrics["loss"] == "cosent"
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]  # epoch 0: the encoder's zero-shot cosine
    zero_shot = metrics["history"][0]["dev"]["pearson"]
    pairs = tmp_path / "pairs.tsv"
    rows = [("A man is playing a guitar.", "A person plays the guitar."), ("The cat sleeps.", "Stocks fell today."),
            ("A woman is slicing onions.", "Someone is cutting an onion.")]
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    code, stdout, err = run_cli(capsys, "predict", "--model", out, "--input", pairs)
    assert code == 0, err
    printed = [float(line.split("\t")[1]) for line in stdout.splitlines()[1:]]
    encoder = Student.from_pretrained(out)  # the fine-tuned folder is a plain student: its cosine is the score
    u = encoder.encode([a for a, _ in rows], convert_to_tensor=True)
    v = encoder.encode([b for _, b in rows], convert_to_tensor=True)
    assert np.allclose(printed, (5 * F.cosine_similarity(u, v)).numpy(), atol=1e-3)
    before = Student.from_pretrained(student_dir)  # and the encoder itself was trained, not a head
    assert not np.allclose(before.encode(["The cat sleeps."]), encoder.encode(["The cat sleeps."]), atol=1e-5)
    # the zero-shot row is the untouched student's cosine
    dev = tmp_path / "dev.tsv"
    dev.write_text("".join((glue_dir / "STS-B" / "dev.tsv").read_text().splitlines(True)[:41]))
    ft_before = tmp_path / "ft0"
    assert run_cli(capsys, "finetune", "--model", student_dir, "--task", "stsb", "--out", ft_before, "--epochs", "1",
                   "--data-dir", glue_dir, "--max-train-rows", "200", "--max-eval-rows", "40", "--lr", "1e-12",
                   "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "predict", "--model", ft_before, "--input", dev)
    assert code == 0 and f"pearson {zero_shot:.4f}" in err


def test_select_keeps_the_best_epoch_and_saves_its_weights(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", out, "--epochs", "3",
                           "--data-dir", glue_dir, "--max-train-rows", "200", "--max-eval-rows", "60", "--select",
                           "dev", "--lr", "3e-3", "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    by_epoch = {h["epoch"]: h for h in metrics["history"]}
    best = max(by_epoch, key=lambda e: (by_epoch[e]["dev"]["accuracy"], -e))
    assert metrics["selected_epoch"] == best and metrics["final"]["dev"] == by_epoch[best]["dev"]
    dev = tmp_path / "dev60.tsv"  # the saved folder reproduces the selected epoch's dev score
    dev.write_text("".join((glue_dir / "SST-2" / "dev.tsv").read_text().splitlines(True)[:61]))
    code, _, err = run_cli(capsys, "predict", "--model", out, "--input", dev)
    assert code == 0 and f"accuracy {metrics['final']['dev']['accuracy']:.4f}" in err


def test_interpolate_keeps_the_best_blend_of_start_and_fine_tuned_encoder(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "stsb", "--out", out, "--epochs", "2",
                           "--data-dir", glue_dir, "--max-train-rows", "200", "--max-eval-rows", "60", "--select",
                           "dev", "--lr", "1e-2", "--interpolate", "on", "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    blend = metrics["interpolation"]
    scores = {float(a): v["dev"]["spearman"] for a, v in blend["scores"].items()}  # the cosine head's choice
    assert blend["chosen_on"] == "dev" and blend["alpha"] == max(scores, key=scores.get)
    assert sorted(scores) == [0.0, 0.25, 0.5, 0.75, 1.0]
    by_epoch = {h["epoch"]: h["dev"]["spearman"] for h in metrics["history"]}
    assert scores[0.0] == pytest.approx(by_epoch[0], abs=1e-6)  # a = 0: the untouched encoder (epoch 0)
    assert scores[1.0] == pytest.approx(by_epoch[metrics["selected_epoch"]], abs=1e-6)  # a = 1: the kept epoch
    assert metrics["final"]["dev"]["spearman"] == pytest.approx(scores[blend["alpha"]], abs=1e-6)
    dev = tmp_path / "dev60.tsv"  # the saved folder is the chosen blend
    dev.write_text("".join((glue_dir / "STS-B" / "dev.tsv").read_text().splitlines(True)[:61]))
    code, _, err = run_cli(capsys, "predict", "--model", out, "--input", dev)
    assert code == 0 and f"pearson {metrics['final']['dev']['pearson']:.4f}" in err


def test_holdout_rows_leave_training_with_their_logits_and_variants(tmp_path, capsys, teacher_dir, glue_dir):
    assert list(selection_rows(100, 2000)) == list(range(0, 100, 10))
    assert 1900 < len(selection_rows(67_349, 2000)) <= 2000 and selection_rows(67_349, 2000)[1] == 34
    ft_teacher, cache = tmp_path / "t", tmp_path / "lc"
    assert run_cli(capsys, "finetune", "--model", teacher_dir, "--task", "sst2", "--out", ft_teacher, "--data-dir",
                   glue_dir, "--max-train-rows", "40", "--max-eval-rows", "10", "--epochs", "1", "--quiet")[0] == 0
    assert run_cli(capsys, "cache-logits", "--model", ft_teacher, "--out", cache, "--max-rows", "40",
                   "--augment", "2", "--data-dir", glue_dir, "--quiet")[0] == 0
    prep = prepare(FinetuneConfig(model="x", task="sst2", data_dir=str(glue_dir), max_train_rows=40, max_eval_rows=10,
                                  kd_cache=str(cache), select="holdout"))
    logits = open_cache(cache)
    by_text = {}
    for i, text in enumerate(logits.texts()):
        by_text.setdefault(text, logits.vectors("logits", np.array([i]))[0])
    assert len(prep.evals["holdout"]) == 4 and prep.transfer_rows == 36 * 2 and len(prep.train) == 36 + 72
    held = set(prep.evals["holdout"].texts)
    assert not held & set(prep.train.texts[:36])
    for text, target in zip(prep.train.texts, prep.kd_targets, strict=True):
        assert np.allclose(by_text[text], target, atol=1e-4)  # each kept row and variant keeps its own teacher logits


def test_bad_head_and_select_are_one_line(student_dir, glue_dir, tmp_path, capsys):
    base = ["finetune", "--model", student_dir, "--out", tmp_path / "o", "--data-dir", glue_dir, "--max-train-rows",
            "30", "--quiet"]
    for args, needle in ((["--task", "sst2", "--head", "cosine"], "--head cosine: for sentence-pair tasks"),
                         (["--task", "stsb", "--freeze-encoder"], "--freeze-encoder: the cosine head"),
                         (["--task", "sst2", "--select", "best"], "--select best: choose one of"),
                         (["--task", "sst2", "--select", "holdout", "--max-train-rows", "10"], "too few"),
                         (["--task", "stsb", "--similarity-loss", "l1"], "--similarity-loss l1"),
                         (["--task", "stsb", "--interpolate", "yes"], "--interpolate yes: choose one of"),
                         (["--task", "stsb", "--interpolate", "on", "--select", "last"],
                          "--interpolate on: needs --select")):
        code, _, err = run_cli(capsys, *base, *args)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and error_lines(err) == lines and needle in lines[0], err
    assert not (tmp_path / "o").exists()


def test_encoder_lr_is_the_encoders_own(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", out, "--epochs", "1",
                           "--data-dir", glue_dir, "--max-train-rows", "100", "--max-eval-rows", "20", "--encoder-lr",
                           "1e-12", "--quiet")
    assert code == 0, err
    before, after = Student.from_pretrained(student_dir), Student.from_pretrained(out)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # the encoder stood still at its rate of 1e-12 ...
    head = load_file(str(out / "head.safetensors"))
    torch.manual_seed(0)  # ... while the head, at --lr, moved away from its seeded initialisation
    from finetune.task_model import TaskHead

    fresh = TaskHead(32, False, 2)
    assert any(not torch.allclose(v, head[k]) for k, v in fresh.state_dict().items())


def zero_shot_run(capsys, student_dir, glue_dir, out, *flags):
    """An STS-B fine-tune of the tiny fixture at an absurd (finite) encoder rate: training can only hurt."""
    return run_cli(capsys, "finetune", "--model", student_dir, "--task", "stsb", "--out", out, "--data-dir", glue_dir,
                   "--epochs", "2", "--lr", "30", "--grad-clip", "0", "--warmup", "0", "--quiet", *flags)


def test_similarity_defaults_keep_the_zero_shot_encoder_when_no_epoch_beats_it(student_dir, glue_dir, tmp_path,
                                                                                capsys):
    out = tmp_path / "ft"
    code, stdout, err = zero_shot_run(capsys, student_dir, glue_dir, out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select"] == "holdout" and metrics["selected_by"] == "spearman"  # the similarity defaults
    assert metrics["selected_epoch"] == 0 and "interpolation" not in metrics
    history = {h["epoch"]: h["holdout"]["spearman"] for h in metrics["history"]}
    assert all(not history[e] > history[0] for e in (1, 2))  # (a NaN never beats it either)
    kept = metrics["zero_shot_kept"]
    assert kept["split"] == "holdout" and kept["metric"] == "spearman" and kept["zero_shot"] == history[0]
    note = [line for line in err.splitlines() if line.startswith("kept the zero-shot encoder")]
    assert note == [kept["note"]]  # one line, also with --quiet
    assert note[0].startswith("kept the zero-shot encoder: no epoch beat it on the held-out rows (Spearman "
                              f"{history[0]:.4f} vs ")
    assert metrics["final"] == {split: metrics["history"][0][split] for split in metrics["eval_rows"]}
    texts = ["A man is playing a guitar.", "The cat sleeps.", "Stocks fell today."]
    before, after = Student.from_pretrained(student_dir), Student.from_pretrained(out)
    assert np.array_equal(before.encode(texts), after.encode(texts))  # the saved encoder is the student it started as
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_explicit_select_wins_over_the_similarity_default(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = zero_shot_run(capsys, student_dir, glue_dir, out, "--select", "last")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select"] == "last" and metrics["selected_epoch"] == 2 and "zero_shot_kept" not in metrics
    assert "kept the zero-shot encoder" not in err and "interpolation" not in metrics  # (auto: no split to blend on)
    texts = ["A man is playing a guitar.", "The cat sleeps."]
    before, after = Student.from_pretrained(student_dir), Student.from_pretrained(out)
    assert not np.allclose(before.encode(texts), after.encode(texts))


def test_cosine_head_default_rate_and_explicit_rates(student_dir, glue_dir, tmp_path, capsys):
    from finetune.students import COSINE_LR

    runs = {"default": (), "lr": ("--lr", "2e-3"), "sst2": ()}
    args = {}
    for name, flags in runs.items():
        out = tmp_path / name
        task = "sst2" if name == "sst2" else "stsb"
        code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", task, "--out", out, "--data-dir",
                               glue_dir, "--epochs", "1", "--max-train-rows", "40", "--max-eval-rows", "10", "--quiet",
                               *flags)
        assert code == 0, err
        args[name] = json.loads((out / "task.json").read_text())["args"]
    assert COSINE_LR == 5e-4 and args["default"]["lr"] == COSINE_LR and args["default"]["select"] == "holdout"
    assert args["default"]["interpolate"] == "auto"
    assert args["lr"]["lr"] == 2e-3  # an explicit --lr wins
    assert args["sst2"]["lr"] == 1e-3 and args["sst2"]["select"] == "last"  # the features head keeps its defaults
