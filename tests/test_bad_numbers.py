"""Bad numbers and odd paths (issue #21): every number setting is range-checked in one line before anything is
written; a relative --input is read from the current folder and never written over; data warnings survive
--quiet; an undecodable file name, a non-text column and `tc export --out .` are one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import FinetuneConfig, LogitsConfig
from pipeline.config import DemoConfig, ProbeConfig
from student.training.train_config import TrainConfig
from teacher_cache.base.errors import UserError
from teacher_cache.encode.config import EncodeConfig, RayOptions
from tests.helpers import error_lines, one_line, run_cli

INF, NAN = math.inf, math.nan
BIG = 100_000_000_000


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- every number setting is checked where the settings are made ----------------------------------------------


@pytest.mark.parametrize("cls,name,value,message", [
    (TrainConfig, "lr", INF, "--lr inf: give a finite number > 0"),
    (TrainConfig, "lr", NAN, "--lr nan: give a finite number > 0"),
    (TrainConfig, "lr", 0.0, "--lr 0.0: give a finite number > 0"),
    (TrainConfig, "lr", "fast", "--lr fast: give a finite number > 0"),
    (TrainConfig, "emb_lr", INF, "--emb-lr inf: give a finite number > 0"),
    (TrainConfig, "weight_decay", INF, "--weight-decay inf: give a finite number >= 0"),
    (TrainConfig, "grad_clip", -1.0, "--grad-clip -1.0: give a finite number >= 0"),
    (TrainConfig, "sif", NAN, "--sif nan: give a finite number >= 0"),
    (TrainConfig, "temperature", INF, "--temperature inf: give a finite number > 0"),
    (TrainConfig, "dropout", 1.0, "--dropout 1.0: give a number in [0, 1)"),
    (TrainConfig, "min_lr_ratio", 1.5, "--min-lr-ratio 1.5: give a number in [0, 1]"),
    (TrainConfig, "epochs", BIG, f"--epochs {BIG}: must be at most 10000"),
    (TrainConfig, "epochs", 0, "--epochs 0: must be at least 1"),
    (TrainConfig, "epochs", 2.5, "--epochs 2.5: give a whole number"),
    (TrainConfig, "max_steps", 0, "--max-steps 0: must be at least 1"),
    (TrainConfig, "warmup_steps", -1, "--warmup-steps -1: must be at least 0"),
    (TrainConfig, "max_rows", 10**30, f"--max-rows {10**30}: must be at most {10**15}"),
    (TrainConfig, "seed", -1, "--seed -1: give a seed from 0 to 4294967295"),
    (TrainConfig, "seed", 2**32, "--seed 4294967296: give a seed from 0 to 4294967295"),
    (FinetuneConfig, "lr", INF, "--lr inf: give a finite number > 0"),
    (FinetuneConfig, "encoder_lr", INF, "--encoder-lr inf: give a finite number > 0"),
    (FinetuneConfig, "encoder_lr", -1e-3, "--encoder-lr -0.001: give a finite number > 0"),
    (FinetuneConfig, "warmup", NAN, "--warmup nan: give a number in [0, 1)"),
    (FinetuneConfig, "kd_alpha", 2.0, "--kd-alpha 2.0: give a number in [0, 1]"),
    (FinetuneConfig, "dropout", -0.1, "--dropout -0.1: give a number in [0, 1)"),
    (FinetuneConfig, "weight_decay", INF, "--weight-decay inf: give a finite number >= 0"),
    (FinetuneConfig, "epochs", BIG, f"--epochs {BIG}: must be at most 10000"),
    (FinetuneConfig, "batch_size", 0, "--batch-size 0: must be at least 1"),
    (FinetuneConfig, "seed", -1, "--seed -1: give a seed from 0 to 4294967295"),
    (LogitsConfig, "augment_seed", -1, "--augment-seed -1: give a seed from 0 to 4294967295"),
    (LogitsConfig, "augment", 10**6, "--augment 1000000: must be at most 1000"),
    (LogitsConfig, "shard_size", 0, "--shard-size 0: must be at least 1"),
    (EncodeConfig, "shard_size", 0, "--shard-size 0: must be at least 1"),
    (EncodeConfig, "max_length", 1, "--max-length 1: must be at least 2"),
    (EncodeConfig, "max_rows", 10**30, f"--max-rows {10**30}: must be at most {10**15}"),
    (RayOptions, "gpus_per_worker", INF, "--gpus-per-worker inf: give a finite number >= 0"),
    (ProbeConfig, "seed", -1, "--seed -1: give a seed from 0 to 4294967295"),
    (ProbeConfig, "batch_size", 0, "--batch-size 0: must be at least 1"),
    (DemoConfig, "lr", INF, "--lr inf: give a finite number > 0"),
    (DemoConfig, "epochs", BIG, f"--epochs {BIG}: must be at most 10000"),
])
def test_a_bad_number_is_refused_when_the_settings_are_made(cls, name, value, message):
    """Library callers (train(TrainConfig(lr=inf)), ...) meet the same one-line error as the CLI."""
    with pytest.raises(UserError) as caught:
        cls(**{name: value})
    assert str(caught.value) == message


def test_validate_checks_a_value_set_after_the_settings_were_made():
    cfg = TrainConfig()
    cfg.lr = INF
    with pytest.raises(UserError, match=r"^--lr inf: give a finite number > 0$"):
        cfg.validate()
    ft = FinetuneConfig()
    ft.seed = -1
    with pytest.raises(UserError, match="--seed -1"):
        ft.validate()


def test_the_defaults_and_the_recipes_pass_the_checks():
    from student.training.recipes import RECIPES
    from student.training.train_config import recipe_config

    for cls in (TrainConfig, FinetuneConfig, LogitsConfig, EncodeConfig, RayOptions, ProbeConfig, DemoConfig):
        cls()
    for name in RECIPES:
        recipe_config(name).validate()


# ---- ... and on the command line, before anything is written ---------------------------------------------------


def test_train_student_lr_inf_with_force_keeps_the_trained_student(tiny_cache, tmp_path, capsys):
    out = tmp_path / "s"
    base = ["train-student", "--shards", tiny_cache, "--out", out, "--recipe", "static", "--emb-dim", "8",
            "--epochs", "1", "--val-rows", "30", "--quiet"]
    code, _, err = run_cli(capsys, *base)
    assert code == 0, err
    before = snapshot(out)
    for flag, value in (("--lr", "inf"), ("--lr", "nan"), ("--emb-lr", "inf")):
        code, _, err = run_cli(capsys, *base, flag, value, "--force")
        line = one_line(code, err, f"{flag} {value}: give a finite number > 0")
        assert err.strip() == line
    code, _, err = run_cli(capsys, *base, "--seed", "-1", "--force")
    one_line(code, err, "--seed -1: give a seed from 0 to 4294967295")
    assert snapshot(out) == before


def test_train_student_epochs_beyond_bound_is_refused_at_once(tiny_cache, tmp_path):
    """It used to count 10^11 epochs' steps in silence (minutes) and then train for ever."""
    out = tmp_path / "s"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train-student", "--shards", str(tiny_cache),
                           "--out", str(out), "--epochs", str(BIG)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert error_lines(done.stderr) == [f"error: --epochs {BIG}: must be at most 10000"], done.stderr
    assert not out.exists()


def own_task(folder: Path, rows: int = 24) -> Path:
    """A tiny own classification task (TSV with a header: sentence, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "own.tsv"
    lines = ["sentence\tlabel"] + [f"{'a good film' if i % 2 else 'a dull film'} number {i}\t{i % 2}"
                                   for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "inf", "--lr inf: give a finite number > 0"),
    ("--encoder-lr", "inf", "--encoder-lr inf: give a finite number > 0"),
    ("--seed", "-1", "--seed -1: give a seed from 0 to 4294967295"),
])
def test_finetune_bad_numbers_are_one_line_and_write_nothing(student_dir, tmp_path, capsys, flag, value, message):
    task = own_task(tmp_path / "data")
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", task, "--text-columns", "sentence",
                           "--out", out, "--epochs", "1", "--quiet", flag, value)
    one_line(code, err, message)
    assert not out.exists()


# ---- tc predict: a relative --input, and an --out that is the --input --------------------------------------------


@pytest.fixture(scope="module")
def ft_own(tmp_path_factory, student_dir) -> Path:
    """The tiny student fine-tuned (1 epoch) on the tiny own task."""
    root = tmp_path_factory.mktemp("ft_own")
    out = root / "ft"
    from pipeline.cli import main

    code = main(["finetune", "--model", str(student_dir), "--task", str(own_task(root / "data")), "--text-columns",
                 "sentence", "--out", str(out), "--epochs", "1", "--quiet"])
    assert code == 0
    return out


def test_predict_reads_a_relative_input_from_the_current_folder(ft_own, tmp_path, monkeypatch, capsys):
    """The README's `tc predict --model ft/ --input SST-2/test.tsv --out preds.tsv` read /SST-2/test.tsv."""
    monkeypatch.chdir(tmp_path)
    Path("SST-2").mkdir()
    Path("SST-2/test.tsv").write_text("index\tsentence\n0\ta good film\n1\ta dull film\n2\tgood\n")
    Path("SST-2/plain.txt").write_text("a good film\na dull film\n")
    for name, rows in (("SST-2/test.tsv", 3), ("SST-2/plain.txt", 2)):
        code, _, err = run_cli(capsys, "predict", "--model", ft_own, "--input", name, "--out", "preds.tsv")
        assert code == 0, err
        lines = Path("preds.tsv").read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == rows + 1


def test_predict_refuses_an_out_that_is_its_input(ft_own, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "in.tsv"
    data.write_text("sentence\na good film\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.tsv").symlink_to(data)
    for out in (data, "in.tsv", "sub/../in.tsv", "link.tsv"):
        code, _, err = run_cli(capsys, "predict", "--model", ft_own, "--input", "in.tsv", "--out", out)
        one_line(code, err, f"--out {out}: is the --input file")
    assert data.read_text() == "sentence\na good film\n"


# ---- tc export --out . ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", [".", "./", "sub/..", ".."])
def test_export_out_the_current_folder_is_one_line(student_dir, tmp_path, monkeypatch, capsys, out):
    """`--out .` was an unexpected ValueError; `--out .. --force` would have deleted the folder above."""
    (tmp_path / "work").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "work" if out == ".." else tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "export", "--model", student_dir, "--to", "onnx", "--out", out, "--force")
    line = one_line(code, err, f"--out {Path(out)}: is the current folder or one above it; name a new folder")
    assert "unexpected" not in line
    assert snapshot(tmp_path) == before and (tmp_path / "sub").is_dir()


def test_export_out_above_the_model_is_one_line(student_dir, tmp_path, capsys):
    """--force would have deleted the student it exports, once the export was done."""
    model = tmp_path / "models" / "student"
    shutil.copytree(student_dir, model)
    code, _, err = run_cli(capsys, "export", "--model", model, "--to", "onnx", "--out", tmp_path / "models",
                           "--force")
    one_line(code, err, f"--out {tmp_path / 'models'}: holds --model {model}; name a new folder")
    assert snapshot(model) == snapshot(student_dir)


# ---- --quiet silences progress, not data warnings ---------------------------------------------------------------


def test_quiet_still_prints_data_warnings(teacher_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"a fine sentence\n\nbad \xff byte\n" + b"x" * 13000 + b"\n")
    code, out, err = run_cli(capsys, "encode", "--corpus", corpus, "--out", tmp_path / "o", "--teacher",
                             teacher_dir, "--max-length", "9999", "--precision", "fp32", "--quiet")
    assert code == 0, err
    assert "warning: --max-length 9999: the teacher reads at most 128 word-pieces" in err
    assert "warning: replaced bad bytes in 1 lines with invalid UTF-8" in err
    assert "warning: truncated 1 over-long lines" in err
    assert "skipped 1 blank lines" in err
    assert "encode:" not in err and "rows x" not in err and out == ""  # progress and the summary stay silent


# ---- file names that are not UTF-8 --------------------------------------------------------------------------------


def test_a_corpus_file_name_that_is_not_utf8_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TC_LOG_DIR", str(tmp_path / "logs"))
    bad = tmp_path / os.fsdecode(b"c\xff.txt")
    bad.write_text("hello world\n")
    for spec in (bad, tmp_path / "*.txt"):
        code, _, err = run_cli(capsys, "encode", "--corpus", spec, "--out", tmp_path / "o")
        one_line(code, err, "c\\xff.txt: the file name is not valid UTF-8")
    assert not (tmp_path / "o").exists() and not (tmp_path / "logs").exists()


def test_the_error_handler_survives_text_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    from pipeline.failures import internal_error

    monkeypatch.setenv("TC_LOG_DIR", str(tmp_path))
    monkeypatch.delenv("TC_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["tc", "encode", "--corpus", os.fsdecode(b"c\xff.txt")])
    assert internal_error(RuntimeError(os.fsdecode(b"cannot read c\xff.txt"))) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [err.strip()] and "cannot read c\\xff.txt" in err and "full traceback in" in err
    (log,) = tmp_path.glob("tc-error-*.log")
    assert "c\\xff.txt" in log.read_text()


# ---- a text column that holds no text ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_a_text_column_that_is_not_text_is_one_line(teacher_dir, tmp_path, capsys, kind):
    import polars as pl

    path = tmp_path / f"c.{kind}"
    frame = pl.DataFrame({"text": [1, 2, 3], "other": ["a", "b", "c"]})
    frame.write_parquet(path) if kind == "parquet" else path.write_text(
        "".join(json.dumps(r) + "\n" for r in frame.to_dicts()))
    code, _, err = run_cli(capsys, "encode", "--corpus", path, "--text-column", "text", "--out", tmp_path / "o",
                           "--teacher", teacher_dir, "--max-length", "64", "--precision", "fp32", "--quiet")
    one_line(code, err, f"{path}: --text-column 'text' holds Int64 values, not text")
    assert not (tmp_path / "o" / "manifest.json").exists()
