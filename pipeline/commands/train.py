"""`tc train-student`: distil a small student from a teacher cache (the teacher itself is never loaded)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Annotated

import typer

from pipeline.options import build, options_from
from student.training.recipes import RECIPE_KNOBS
from student.training.train_config import TrainConfig
from teacher_cache.base.errors import UserError
from teacher_cache.reader import open_cache


# What a recipe sets is left unset on the command line, so that the recipe's value holds unless the option is given.
@options_from(TrainConfig, unset=dict.fromkeys(RECIPE_KNOBS, "the recipe's"))
def train_student(
    ctx: typer.Context,
    nproc: Annotated[int, typer.Option(help="Train on N local processes with DistributedDataParallel: re-runs "
                                            "this command under torchrun (gloo on CPU, nccl on CUDA, one GPU "
                                            "per process); --batch-size is per process.")] = 1,
    **settings,
) -> None:
    """Train a small student (the static recipe by default) to reproduce the cached teacher vectors, from the cache.

    Reports val MSE, cosine and kNN@10 agreement with the teacher on held-out rows; checkpoints atomically so
    that --resume continues after a crash or Ctrl-C with the same data order.

    With --nproc N (or when started by torchrun) each rank streams its own equal share of the training rows and
    rank 0 evaluates and writes; --resume needs the number of processes the checkpoint was made with.

    Example: tc train-student --shards out/ --out student_out/ --recipe static --epochs 3
    """
    from student.training import distributed
    from student.training.train import train

    cfg = build(TrainConfig, settings)  # the recipe is applied as the config is made, as for train(TrainConfig())
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: must be at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: check, then re-launch
        check_before_launch(cfg, nproc)
        code = run_quietly(distributed.torchrun_command(nproc, "pipeline.cli", ["train-student", *forwarded(ctx)]))
        if code:
            raise typer.Exit(code)
        return
    rank = int(os.environ.get("RANK", "0"))
    try:
        train(cfg)
    except UserError:
        if rank:  # every rank meets the same error; rank 0 prints it
            # torchrun stops the other ranks as soon as one fails: give rank 0 a moment to print first (a CI run
            # lost the line once when this rank exited first)
            time.sleep(2)
            raise typer.Exit(1) from None
        raise
    except KeyboardInterrupt:
        if rank:
            raise typer.Exit(130) from None
        raise
    finally:
        distributed.shutdown()


def forwarded(ctx: typer.Context) -> list[str]:
    """This command's options as given (those that differ from the defaults), without --nproc, as argv."""
    argv: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "nproc" or value is None or value == param.default:
            continue
        if getattr(param, "is_flag", False):
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


def check_before_launch(cfg, nproc: int) -> None:
    """The usual mistakes, caught once here in one line rather than on every rank."""
    import torch

    from student.training.student_out import StudentOut

    cfg.validate()
    open_cache(cfg.shards).check(cfg.max_rows)
    StudentOut.open(cfg.out, cfg.shards).check(cfg.resume, cfg.force)  # a folder or a store URL
    if cfg.device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s); use one per process")


def run_quietly(cmd: list[str]) -> int:
    """Run the torchrun command and return its exit code; Ctrl-C goes to the ranks, which checkpoint and stop."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return subprocess.call(cmd)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.call(cmd)
    finally:
        signal.signal(signal.SIGINT, previous)
