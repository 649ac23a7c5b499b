"""`tc finetune` / `tc cache-logits` / `tc predict`: round trips, task KD on tiny models, one-line bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from finetune.augment import MASK, AugmentConfig, augment_examples
from finetune.fit import task_loss
from finetune.task_data import load_split
from finetune.task_model import load_task_model
from finetune.tasks import GLUE_DIR_ENV, TASKS
from student import Student
from teacher_cache import open_cache
from teacher_cache.base.lock import LOCK_NAME, FolderLock
from tests.helpers import error_lines, run_cli

SMALL = ["--max-train-rows", "120", "--max-eval-rows", "60", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def ft_teacher(tmp_path_factory, teacher_dir, glue_dir) -> Path:
    """The tiny random BERT fine-tuned on 120 SST-2 rows."""
    out = tmp_path_factory.mktemp("ft_teacher") / "t"
    code = _cli("finetune", "--model", teacher_dir, "--task", "sst2", "--out", out, "--lr", "1e-3", "--data-dir",
                glue_dir, *SMALL)
    assert code == 0
    return out


@pytest.fixture(scope="module")
def sst2_logits(tmp_path_factory, ft_teacher, glue_dir) -> Path:
    """Its logits over the first 150 SST-2 training rows."""
    out = tmp_path_factory.mktemp("logits") / "lc"
    assert _cli("cache-logits", "--model", ft_teacher, "--out", out, "--max-rows", "150", "--data-dir", glue_dir,
                "--quiet") == 0
    return out


def _cli(*args) -> int:
    from pipeline.cli import main

    return main([str(a) for a in args])


def one_line_error(capsys, *args, needle: str) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and error_lines(err) == lines, err
    assert needle in lines[0], lines[0]


def test_help_has_examples(capsys):
    for command in ("finetune", "cache-logits", "predict"):
        assert run_cli(capsys, command, "--help")[0] == 0
    assert run_cli(capsys, "predict", "--help")[1].count("Example: tc predict") == 1


def test_student_finetune_predict_round_trip(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", out,
                                "--data-dir", glue_dir, *SMALL[:-3], "--epochs", "2", "--quiet")
    assert code == 0, err
    assert "dev accuracy" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["kd"] is None
    assert Student.from_pretrained(out).dim == 32  # still a student folder
    model, spec = load_task_model(out)
    assert spec.name == "sst2"
    dev = tmp_path / "dev60.tsv"  # the 60 dev rows the run scored: predict must agree with metrics.json
    dev.write_text("".join((glue_dir / "SST-2" / "dev.tsv").read_text().splitlines(True)[:61]))
    code, _, err = run_cli(capsys, "predict", "--model", out, "--input", dev, "--out", tmp_path / "p.tsv")
    assert code == 0, err
    assert f"accuracy {metrics['final']['dev']['accuracy']:.4f}" in err
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 61
    assert {ln.split("\t")[1] for ln in lines[1:]} <= {"0", "1"}
    test = glue_dir / "SST-2" / "test.tsv"  # header `index sentence`: a header line and one line per row back
    code, stdout, _ = run_cli(capsys, "predict", "--model", out, "--input", test)
    assert code == 0 and len(stdout.splitlines()) == len(test.read_text().splitlines())
    assert not (out / LOCK_NAME).exists()  # released with the run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with FolderLock(out, "tc finetune"):  # another fine-tuning run writing there now: refused, nothing touched
        code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", out,
                               "--data-dir", glue_dir, *SMALL[:-3], "--force", "--quiet")
    assert code != 0 and len(error_lines(err)) == 1 and f"--out {out}: in use by pid {os.getpid()}" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_pair_task_with_frozen_encoder(student_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "mrpc", "--out", out,
                           "--data-dir", glue_dir, "--freeze-encoder", *SMALL)
    assert code == 0, err
    before, after = load_file(str(student_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final"]) == {"dev", "test"} and set(metrics["final"]["dev"]) == {"f1", "accuracy"}
    model, _ = load_task_model(out)
    assert model.head.settings["pair"] and model.head.net[-1].in_features == 256


def test_kd_loss_mixes_cross_entropy_and_logit_mse():
    torch.manual_seed(0)
    out, teacher, gold = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    ce, mse = F.cross_entropy(out, gold), F.mse_loss(out, teacher)
    assert torch.allclose(task_loss(out, gold, None, 0.5, False), ce)
    assert torch.allclose(task_loss(out, gold, teacher, 0.0, False), ce)
    assert torch.allclose(task_loss(out, gold, teacher, 1.0, False), mse)
    assert torch.allclose(task_loss(out, gold, teacher, 0.3, False), 0.7 * ce + 0.3 * mse)
    score, target = torch.randn(8, 1), torch.rand(8) * 5
    assert torch.allclose(task_loss(score, target, teacher[:, :1], 0.5, True),
                          0.5 * F.mse_loss(score[:, 0], target) + 0.5 * F.mse_loss(score, teacher[:, :1]))


def test_unlabelled_rows_take_the_teacher_loss_alone():
    torch.manual_seed(0)
    out, teacher = torch.randn(6, 2), torch.randn(6, 2)
    gold = torch.tensor([1, 0, 1, -1, -1, -1])
    per_row = torch.cat([0.6 * F.cross_entropy(out[:3], gold[:3], reduction="none")
                         + 0.4 * ((out[:3] - teacher[:3]) ** 2).mean(1), ((out[3:] - teacher[3:]) ** 2).mean(1)])
    assert torch.allclose(task_loss(out, gold, teacher, 0.4, False), per_row.mean())
    score, target = torch.randn(4, 1), torch.tensor([1.0, 2.0, float("nan"), float("nan")])
    expected = torch.cat([0.5 * (score[:2, 0] - target[:2]) ** 2 + 0.5 * ((score[:2] - teacher[:2, :1]) ** 2)[:, 0],
                          ((score[2:] - teacher[2:4, :1]) ** 2)[:, 0]]).mean()
    assert torch.allclose(task_loss(score, target, teacher[:4, :1], 0.5, True), expected)


def test_augmented_variants_are_masked_or_cut_and_reproducible():
    texts = ["the quick brown fox jumps over the lazy dog"] * 50
    cfg = AugmentConfig(copies=3, seed=1)
    a, pairs = augment_examples(texts, None, cfg)
    assert len(a) == 150 and pairs is None and a == augment_examples(texts, None, cfg)[0]
    assert any(MASK in t for t in a) and any(len(t.split()) < 9 for t in a)
    assert all(w in texts[0].split() or w == MASK for t in a for w in t.split())
    _, pairs = augment_examples(texts[:2], ["a b c", "d e f"], cfg)
    assert len(pairs) == 6


def test_augmented_logits_feed_kd(student_dir, ft_teacher, glue_dir, tmp_path, capsys):
    cache = tmp_path / "aug"
    code, _, err = run_cli(capsys, "cache-logits", "--model", ft_teacher, "--out", cache, "--max-rows", "60",
                           "--augment", "2", "--data-dir", glue_dir, "--quiet")
    assert code == 0, err
    c = open_cache(cache)
    assert len(c) == 180 and c.manifest.extra["train_rows"] == 60 and c.manifest.extra["augment"]["copies"] == 2
    train = load_split(TASKS["sst2"], "train", glue_dir, 60)
    assert c.texts(np.arange(60)) == train.texts
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", tmp_path / "ft",
                           "--data-dir", glue_dir, "--max-train-rows", "40", "--max-eval-rows", "30", "--epochs", "1",
                           "--quiet", "--kd-cache", cache)
    assert code == 0, err
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["train_rows"] == 40 and metrics["transfer_rows"] == 80  # only the variants of rows used


def test_logits_cache_layout_and_resume(sst2_logits, ft_teacher, glue_dir, capsys):
    cache = open_cache(sst2_logits)
    assert cache.manifest.kind == "logits" and cache.manifest.extra["task"] == "sst2" and len(cache) == 150
    train = load_split(TASKS["sst2"], "train", glue_dir, 150)
    assert cache.texts() == train.texts and cache.vectors("logits").shape == (150, 2)
    assert run_cli(capsys, "verify", sst2_logits)[0] == 0
    code, _, err = run_cli(capsys, "cache-logits", "--model", ft_teacher, "--out", sst2_logits, "--max-rows", "150",
                           "--data-dir", glue_dir)
    assert code == 0 and "already complete" in err
    one_line_error(capsys, "cache-logits", "--model", ft_teacher, "--out", sst2_logits, "--max-rows", "140",
                   "--data-dir", glue_dir, needle="other settings")
    one_line_error(capsys, "cache-logits", "--model", ft_teacher, "--task", "cola", "--out", "x",
                   needle="fine-tuned on sst2")
    dev = glue_dir / "SST-2" / "dev.tsv"
    code, stdout, _ = run_cli(capsys, "predict", "--model", ft_teacher, "--input", dev)
    assert code == 0 and len(stdout.splitlines()) == len(dev.read_text().splitlines())


def test_encode_logits_is_cache_logits(sst2_logits, ft_teacher, glue_dir, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "encode", "--teacher", ft_teacher, "--logits", "--out", tmp_path / "a",
                           "--max-rows", "150", "--data-dir", glue_dir, "--quiet")
    assert code == 0, err
    ours, theirs = open_cache(tmp_path / "a"), open_cache(sst2_logits)
    assert ours.texts() == theirs.texts()
    assert np.array_equal(ours.vectors("logits"), theirs.vectors("logits"))
    one_line_error(capsys, "encode", "--corpus", "x.txt", "--out", tmp_path / "v", "--data-dir", glue_dir,
                   needle="only with --logits")
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))  # without --data-dir the task's rows come from $TC_GLUE_DIR
    code, _, err = run_cli(capsys, "encode", "--teacher", ft_teacher, "--logits", "--out", tmp_path / "e",
                           "--max-rows", "150", "--quiet")
    assert code == 0, err
    assert np.array_equal(open_cache(tmp_path / "e").vectors("logits"), theirs.vectors("logits"))
    # --corpus: a file in the task's layout (here the first 20 dev rows) instead of its training rows
    dev = tmp_path / "dev.tsv"
    dev.write_text("".join((glue_dir / "SST-2" / "dev.tsv").read_text().splitlines(True)[:21]))
    code, _, err = run_cli(capsys, "encode", "--teacher", ft_teacher, "--logits", "--corpus", dev,
                           "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    assert open_cache(tmp_path / "b").texts() == load_split(TASKS["sst2"], "dev", glue_dir, 20).texts
    one_line_error(capsys, "encode", "--logits", "--out", tmp_path / "c", needle="--logits: pass --teacher")


def test_kd_run_changes_the_student(student_dir, sst2_logits, glue_dir, tmp_path, capsys):
    runs = {}
    for name, extra in (("plain", []), ("kd", ["--kd-cache", sst2_logits, "--kd-alpha", "0.9"])):
        code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", tmp_path / name,
                               "--data-dir", glue_dir, *SMALL, *extra)
        assert code == 0, err
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["kd"]["kd"]["alpha"] == 0.9
    assert runs["kd"]["history"][0]["train_loss"] != runs["plain"]["history"][0]["train_loss"]
    dev = load_split(TASKS["sst2"], "dev", glue_dir, 60)
    plain, kd = (load_task_model(tmp_path / n)[0].predict(dev) for n in ("plain", "kd"))
    assert not np.allclose(plain, kd, atol=1e-4)


def glue_copy(source: Path, root: Path, folder: str, rows: int, edit=None) -> Path:
    """A GLUE folder holding the first `rows` train/dev rows of one task in `source`, the train lines through `edit`."""
    (root / folder).mkdir(parents=True)
    for split in ("train", "dev"):
        lines = (source / folder / f"{split}.tsv").read_text().splitlines(True)[:rows + 1]
        (root / folder / f"{split}.tsv").write_text("".join(edit(lines) if edit and split == "train" else lines))
    return root


def test_bad_input_is_one_line(student_dir, sst2_logits, tiny_cache, glue_dir, tmp_path, capsys, monkeypatch):
    base = ["finetune", "--model", student_dir, "--out", tmp_path / "o", "--quiet"]
    glue = ["--data-dir", glue_dir]
    one_line_error(capsys, *base, "--task", "mnli", needle="--task mnli: unknown task")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    one_line_error(capsys, *base, "--task", "sst2", needle="--data-dir: required (or set TC_GLUE_DIR)")
    (tmp_path / "empty_dir").mkdir()
    one_line_error(capsys, *base, "--task", "sst2", "--data-dir", tmp_path / "empty_dir", needle="no SST-2/train.tsv")
    bad = glue_copy(glue_dir, tmp_path / "bad", "SST-2", 20, lambda ls: ls[:3] + ["a fine film\t2\n"] + ls[3:])
    one_line_error(capsys, *base, "--task", "sst2", "--data-dir", bad,
                   needle="train.tsv:4: label '2' is not one of the task's labels (0, 1)")
    blank = glue_copy(glue_dir, tmp_path / "blank", "SST-2", 20, lambda ls: ls[:1])
    one_line_error(capsys, *base, "--task", "sst2", "--data-dir", blank, needle="no rows (empty file)")
    (tmp_path / "zero.tsv").write_text("")
    one_line_error(capsys, *base, "--task", tmp_path / "zero.tsv", "--text-columns", "text", needle="empty file")
    for not_student, needle in ((tmp_path / "empty_dir", "not a student folder"),
                                (tiny_cache, "a teacher cache, not a student folder"),
                                (tmp_path / "nope/", "no such folder")):
        one_line_error(capsys, "finetune", "--model", not_student, "--task", "sst2", "--out", tmp_path / "o", *glue,
                       needle=needle)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps({"arch": "bilstm"}))
    one_line_error(capsys, "finetune", "--model", tmp_path / "half", "--task", "sst2", "--out", tmp_path / "o", *glue,
                   needle="no model.safetensors")
    kd = [*base, "--kd-cache"]
    one_line_error(capsys, *kd, sst2_logits, "--task", "cola", *glue, needle="holds logits for task sst2, not cola")
    one_line_error(capsys, *kd, sst2_logits, "--task", "sst2", "--max-train-rows", "200", *glue,
                   needle="holds 150 rows")
    one_line_error(capsys, *kd, tiny_cache, "--task", "sst2", "--max-train-rows", "20", *glue,
                   needle="not teacher logits")
    edited = glue_copy(glue_dir, tmp_path / "edited", "SST-2", 100, lambda ls: ls[:6] + ["an edited row\t1\n"] + ls[7:])
    one_line_error(capsys, *kd, sst2_logits, "--task", "sst2", "--data-dir", edited, needle="row 5 is")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    one_line_error(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", tmp_path / "full", *glue,
                   needle="not empty")
    one_line_error(capsys, "predict", "--model", student_dir, "--input", "x.tsv", needle="not a fine-tuned model")
    assert not (tmp_path / "o").exists()


def test_own_regression_task_with_held_out_dev(student_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [{"q": f"question {i}", "a": f"answer {i % 7}", "score": round(float(rng.uniform(0, 1)), 3)}
            for i in range(60)]
    train = tmp_path / "own.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ft"
    code, stdout, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", train, "--text-columns", "q,a",
                                "--label-column", "score", "--regression", "--out", out, "--epochs", "1", "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    # a similarity task: its kept epoch is chosen on held-out training rows (every 10th) by default
    assert metrics["task"] == "custom:own" and metrics["train_rows"] == 48
    assert metrics["eval_rows"] == {"dev": 6, "holdout": 6} and metrics["select"] == "holdout"
    assert set(metrics["final"]["dev"]) == {"pearson", "spearman"}
    code, stdout, err = run_cli(capsys, "predict", "--model", out, "--input", train)
    assert code == 0 and len(stdout.splitlines()) == 61 and "pearson" in err


def test_predict_reads_task_json_once(ft_teacher, glue_dir, capsys, monkeypatch):
    """tc predict reads and checks task.json once and builds its task once: the loader takes what predict read."""
    import finetune.task_json as task_json
    from finetune.tasks import TaskSpec

    checked, built = [], []
    check, from_dict = task_json.check_task_json, TaskSpec.from_dict.__func__
    monkeypatch.setattr(task_json, "check_task_json", lambda meta, path: checked.append(path) or check(meta, path))
    monkeypatch.setattr(TaskSpec, "from_dict", classmethod(lambda cls, d: built.append(d) or from_dict(cls, d)))
    code, _, err = run_cli(capsys, "predict", "--model", ft_teacher, "--input", glue_dir / "SST-2" / "dev.tsv")
    assert code == 0, err
    assert len(checked) == 1 and len(built) == 1


def test_logits_cached_into_a_bucket_equal_the_local_cache(ft_teacher, sst2_logits, glue_dir, s3_env, capsys):
    """tc cache-logits --out s3://: the same writer as tc encode (CacheWriter), so the same shards, manifest last."""
    pytest.importorskip("moto.server")
    url = f"s3://{s3_env}/logits/sst2"
    code, _, err = run_cli(capsys, "cache-logits", "--model", ft_teacher, "--out", url, "--max-rows", "150",
                           "--data-dir", glue_dir, "--quiet")
    assert code == 0, err
    remote, local = open_cache(url), open_cache(sst2_logits)
    assert remote.manifest.kind == "logits" and len(remote) == len(local) == 150
    assert [s.sha256 for s in remote.manifest.shards] == [s.sha256 for s in local.manifest.shards]
    code, _, err = run_cli(capsys, "cache-logits", "--model", ft_teacher, "--out", url, "--max-rows", "150",
                           "--data-dir", glue_dir, "--quiet")
    assert code == 0, err  # a rerun finds it complete
