"""`tc train-student`: distil a small student from a teacher cache (the teacher itself is never loaded)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer

from teacher_cache.errors import CacheError


def train_student(
    ctx: typer.Context,
    shards: Annotated[Path, typer.Option(help="Cache folder written by `tc encode`.")] = Path("out"),
    out: Annotated[Path, typer.Option(help="Student folder to write (created; refused when it holds other "
                                           "things, unless --force).")] = Path("student_out"),
    recipe: Annotated[str, typer.Option(help="A measured recipe to start from: static (default; ~35x the "
                                              "teacher's speed), compact (a narrow CNN) or paper (the paper's "
                                              "BiLSTM). Every option below overrides it.")] = None,
    arch: Annotated[str, typer.Option(help="bilstm (the paper's), cnn or static (model2vec-like); default: the "
                                            "recipe's.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training rows (default: the recipe's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Sentences per step (default: the recipe's).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine decay; default: the "
                                            "recipe's).")] = None,
    emb_lr: Annotated[float, typer.Option(help="Peak learning rate of the token embeddings and weights "
                                                "(default: the recipe's, else --lr).")] = None,
    max_rows: Annotated[int, typer.Option(help="Use only the first N rows of the cache.")] = None,
    val_rows: Annotated[int, typer.Option(help="Held-out rows, chosen by id (default min(2000, 10%)).")] = None,
    init_embeddings: Annotated[str, typer.Option(help="teacher (the cache's token embeddings, PCA-projected), "
                                                      "outputs (the teacher's output for each token, static "
                                                      "only) or random.")] = None,
    token_weights: Annotated[bool, typer.Option(help="Static: learn a weight per token, SIF-initialised.")] = None,
    kernel_sizes: Annotated[str, typer.Option(help="CNN: comma-separated odd convolution widths (default: the "
                                                   "recipe's, else 3,5,7).")] = None,
    static_path: Annotated[bool, typer.Option(help="CNN: add a static student's path beside the convolutions "
                                                    "(started from the token outputs).")] = None,
    sif: Annotated[float, typer.Option(help="SIF's a in a/(a+p(token)) for the initial token weights "
                                             "(0: none).")] = None,
    target_column: Annotated[str, typer.Option(help="Teacher vector to learn: a pooling (mean, cls) or column "
                                                    "name; default the cache's first.")] = None,
    loss: Annotated[str, typer.Option(help="mse (the paper's), cosine, contrastive (in-batch InfoNCE) or "
                                            "relational (in-batch similarity KL); join several with '+'.")] = None,
    emb_dim: Annotated[int, typer.Option(help="Embedding width (default: the recipe's, else 300; "
                                             "static 256).")] = None,
    hidden: Annotated[int, typer.Option(help="LSTM units per direction (default 512) or CNN channels per "
                                             "width (default 256).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoint with the same settings.")] = False,
    force: Annotated[bool, typer.Option(help="Start over in an --out that holds an earlier run or other "
                                             "files (only this command's own files are replaced).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the initialisation and the data order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (autocast on CUDA only).")] = "auto",
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps as well as at each epoch end "
                                                 "(0: epoch ends only).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps as well as at each epoch "
                                                       "end (0: epoch ends only).")] = 500,
    max_steps: Annotated[int, typer.Option(help="Stop after N steps in all, with a checkpoint to --resume "
                                                "from.")] = None,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes (each reads its own "
                                                  "shards).")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
    nproc: Annotated[int, typer.Option(help="Train on N local processes with DistributedDataParallel: re-runs "
                                            "this command under torchrun (gloo on CPU, nccl on CUDA, one GPU "
                                            "per process); --batch-size is per process.")] = 1,
) -> None:
    """Train a small student (the static recipe by default) to reproduce the cached teacher vectors, from the cache.

    Reports val MSE, cosine and kNN@10 agreement with the teacher on held-out rows; checkpoints atomically so
    that --resume continues after a crash or Ctrl-C with the same data order.

    With --nproc N (or when started by torchrun) each rank streams its own equal share of the training rows and
    rank 0 evaluates and writes; --resume needs the number of processes the checkpoint was made with.

    Example: tc train-student --shards out/ --out student_out/ --recipe static --epochs 3
    """
    from student import distributed
    from student.recipes import recipe_config
    from student.train import train

    cfg = recipe_config(recipe, shards=str(shards), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size,
                      lr=lr, emb_lr=emb_lr, max_rows=max_rows, val_rows=val_rows, init_embeddings=init_embeddings,
                      token_weights=token_weights, static_path=static_path, sif=sif,
                      kernel_sizes=parse_kernel_sizes(kernel_sizes),
                      target_column=target_column, loss=loss, emb_dim=emb_dim, hidden=hidden, resume=resume,
                      force=force, seed=seed, device=device, precision=precision, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, max_steps=max_steps, num_workers=num_workers, quiet=quiet)
    if nproc < 1:
        raise CacheError(f"--nproc {nproc}: must be at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: check, then re-launch
        check_before_launch(cfg, nproc)
        code = run_quietly(distributed.torchrun_command(nproc, "pipeline.cli", ["train-student", *forwarded(ctx)]))
        if code:
            raise typer.Exit(code)
        return
    rank = int(os.environ.get("RANK", "0"))
    try:
        train(cfg)
    except CacheError:
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


def parse_kernel_sizes(text: str | None) -> list[int] | None:
    """'3,5' -> [3, 5]; a one-line error naming --kernel-sizes otherwise."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CacheError(f"--kernel-sizes {text}: give comma-separated odd widths, e.g. 3,5") from None


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

    from student.checkpoint import check_output
    from teacher_cache.reader import open_cache

    cfg.validate()
    open_cache(cfg.shards).check()
    check_output(cfg.out, cfg.shards, cfg.resume, cfg.force)
    if cfg.device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise CacheError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s); use one per process")


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
