"""A finite but absurd learning rate (--lr 1e30): training stops in one line at the first non-finite loss, exits
non-zero, and writes no weights that are not finite (issue #21 follow-up).

--force clears this command's own files from --out only just before the new run's first save (student/training/train.py
replace_earlier, finetune/fit.py OutWrites), so a --force run that diverges (or is killed) before it saves anything
leaves the earlier model there, whole; and nothing non-finite is ever written in its place.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from teacher_cache.base.lock import LOCK_NAME
from tests.helpers import error_lines, one_line, run_cli, tc_subprocess

HOOKS = Path(__file__).resolve().parent / "hooks"
# a 16-wide BiLSTM on the 300-row tiny cache: 17 steps per epoch
STUDENT = ["--arch", "bilstm", "--init-embeddings", "teacher", "--loss", "mse", "--emb-dim", "16", "--hidden", "16",
           "--batch-size", "16", "--val-rows", "30", "--epochs", "2", "--quiet"]
SMALL = ["--max-train-rows", "120", "--max-eval-rows", "60", "--epochs", "2", "--quiet"]
WEIGHTS = ("model.safetensors", "head.safetensors")


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every floating-point tensor saved under `folder` (safetensors files and the training checkpoint)."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            found |= {f"{path.name}:{k}": v for k, v in load_file(path).items()}
        elif path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            found |= {f"{path.name}:{k}": v for k, v in state["model"].items()}
    return {k: v for k, v in found.items() if v.is_floating_point()}


def assert_all_finite(folder: Path) -> None:
    bad = [k for k, v in tensors(folder).items() if not torch.isfinite(v).all()]
    assert not bad, bad


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative name -> its bytes (the lock file aside: a killed run leaves its own)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


# ---- tc train-student -------------------------------------------------------------------------------------------


# a BiLSTM's gates saturate, so its token table at --emb-lr 1e30 still trains (finite, and well): not a divergence;
# a static student's output is a mean of those rows, so there the loss overflows
@pytest.mark.parametrize("flag,arch", [("--lr", "bilstm"), ("--emb-lr", "static")])
def test_train_student_absurd_lr_stops_in_one_line(tiny_cache, tmp_path, capsys, flag, arch):
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", out, *STUDENT, "--arch", arch,
                           "--lr", "0.01", flag, "1e30")
    line = one_line(code, err, "error: training diverged at epoch 1 step ", "(loss ", f"lower {flag} (now 1e+30)",
                    f"nothing was saved in {out}")
    assert err.strip() == line
    assert not any((out / name).exists() for name in (*WEIGHTS, "training_args.json", "checkpoint"))
    assert_all_finite(out)


def test_train_student_force_over_a_good_student_writes_nothing_broken(tiny_cache, tmp_path, capsys):
    out = tmp_path / "s"
    base = ["train-student", "--shards", tiny_cache, "--out", out, *STUDENT, "--epochs", "1", "--lr", "0.01"]
    code, _, err = run_cli(capsys, *base)
    assert code == 0, err
    before = snapshot(out)
    assert "model.safetensors" in before and "training_args.json" in before
    code, _, err = run_cli(capsys, *base, "--lr", "1e30", "--force")
    one_line(code, err, "training diverged at epoch 1 step ", "lower --lr (now 1e+30)",
             f"nothing was saved in {out}; --force removed nothing: the earlier run's files there are kept")
    # it diverged before its first save, so --force removed nothing: the earlier student is there, whole
    assert snapshot(out) == before
    assert_all_finite(out)
    code, _, err = run_cli(capsys, *base, "--force")  # and a --force run that saves does replace it
    assert code == 0, err
    assert set(snapshot(out)) == set(before)  # a finished student again (the same files), no checkpoint left


def test_train_student_force_killed_before_its_first_save_keeps_the_earlier_student(tiny_cache, tmp_path, capsys,
                                                                                     monkeypatch):
    """SIGTERM after every check and the step-0 evaluation began (where --force used to clear --out), before the
    first checkpoint: the process dies there, and the earlier student is there byte for byte."""
    out = tmp_path / "s"
    base = ["train-student", "--shards", tiny_cache, "--out", out, *STUDENT, "--epochs", "1", "--lr", "0.01"]
    code, _, err = run_cli(capsys, *base)
    assert code == 0, err
    before = snapshot(out)
    assert "model.safetensors" in before
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TC_SIGTERM_AT_FIRST_EVAL", "1")
    proc = tc_subprocess(*base, "--force")
    _, err = proc.communicate(timeout=600)  # a guard against a hang only
    assert proc.returncode == -signal.SIGTERM, err
    assert snapshot(out) == before
    assert not (out / "checkpoint").exists()


def test_train_student_keeps_the_last_finite_checkpoint(tiny_cache, tmp_path, capsys):
    """Checkpoints saved before the divergence stay, each with finite weights; the line says which step is kept."""
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", out, *STUDENT, "--lr", "1e30",
                           "--checkpoint-every", "1", "--warmup-steps", "0")
    line = one_line(code, err, "training diverged at epoch 1 step ", f"{out / 'checkpoint'} keeps step ")
    assert_all_finite(out)
    if (out / "checkpoint" / "checkpoint.pt").exists():
        saved = torch.load(out / "checkpoint" / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert f"keeps step {saved['step']} " in line


def test_train_student_never_saves_non_finite_weights(tiny_cache, tmp_path, monkeypatch):
    """Weights that turn non-finite on a step whose loss was finite are caught before a checkpoint is written."""
    import student.training.train as train_module
    from student.training.train import TrainConfig, train
    from teacher_cache.base.errors import UserError

    step = train_module.train_step

    def poisoned(model, batch, *args, **kwargs):
        loss = step(model, batch, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")  # the loss it returns was computed before
        return loss

    monkeypatch.setattr(train_module, "train_step", poisoned)
    out = tmp_path / "s"
    cfg = TrainConfig(shards=str(tiny_cache), out=str(out), emb_dim=16, hidden=16, epochs=1, batch_size=16,
                      lr=1e-2, val_rows=30, quiet=True, max_steps=1, recipe="paper-512")
    with pytest.raises(UserError, match=r"training diverged at epoch 1 step 1 \(weights not finite\)"):
        train(cfg)
    assert not (out / "checkpoint").exists()


def test_ddp_ranks_stop_together_when_one_rank_diverges(tiny_cache, tmp_path, capfd, monkeypatch):
    """Rank 1 alone sees a NaN loss at step 3 (tests/hooks: TC_DDP_NAN_AT): both ranks stop there, none hangs."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TC_DDP_NAN_AT", "1:3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "s"
    code, _, err = run_cli(capfd, "train-student", "--shards", tiny_cache, "--out", out, *STUDENT, "--lr", "0.01",
                           "--batch-size", "8", "--nproc", "2")
    assert code == 1 and "Traceback" not in err, err
    assert error_lines(err) == ["error: training diverged at epoch 1 step 3 (loss not finite on another rank): lower "
                                f"--lr (now 0.01) or --emb-lr (now 0.01); nothing was saved in {out}"], err
    assert not (out / "checkpoint").exists() and not (out / "model.safetensors").exists()


# ---- tc finetune --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,named", [(["--lr", "1e30"], "--lr (now 1e+30)"),
                                         (["--encoder-lr", "1e30"], "--encoder-lr (now 1e+30)")])
def test_finetune_student_absurd_lr_stops_in_one_line(student_dir, glue_dir, tmp_path, capsys, flags, named):
    out = tmp_path / "ft"
    base = ["finetune", "--model", student_dir, "--task", "sst2", "--out", out, "--data-dir", glue_dir, *SMALL]
    code, _, err = run_cli(capsys, *base)
    assert code == 0, err
    before = snapshot(out)
    assert "task.json" in before and any(name in before for name in WEIGHTS)
    code, _, err = run_cli(capsys, *base, *flags, "--force")
    line = one_line(code, err, "error: training diverged at epoch 1 step ", "(loss ", f"lower {named}",
                    f"no model was saved in {out}; --force removed nothing: the earlier run's files there are kept")
    assert err.strip() == line
    # it diverged before its first write, so --force removed nothing: the earlier fine-tuned model is there, whole
    assert snapshot(out) == before
    assert_all_finite(out)


def test_finetune_teacher_absurd_lr_stops_in_one_line(teacher_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(capsys, "finetune", "--model", teacher_dir, "--task", "sst2", "--out", out, "--lr", "1e30",
                           "--data-dir", glue_dir, *SMALL)
    one_line(code, err, "error: training diverged at epoch 1 step ", "lower --lr (now 1e+30)")
    assert not any((out / name).exists() for name in (*WEIGHTS, "task.json", "config.json"))


def test_finetune_one_step_to_absurd_weights_is_caught(student_dir, glue_dir, tmp_path, capsys):
    """A single step: its loss was finite, the weights it left predict no finite output; nothing is saved."""
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "finetune", "--model", student_dir, "--task", "sst2", "--out", out, "--data-dir",
                           glue_dir, "--max-train-rows", "32", "--batch-size", "32", "--max-eval-rows", "60",
                           "--epochs", "1", "--warmup", "0", "--lr", "1e30", "--quiet")
    one_line(code, err, "error: training diverged at epoch 1 step 1 (", "lower --lr (now 1e+30)")
    assert not any((out / name).exists() for name in (*WEIGHTS, "task.json", "metrics.json"))
