"""`tc train-student`: distil a small student from a teacher cache (the teacher itself is never loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_student(
    shards: Annotated[Path, typer.Option(help="Cache folder written by `tc encode`.")] = Path("out"),
    out: Annotated[Path, typer.Option(help="Student folder to write (created; refused when it holds other "
                                           "things, unless --force).")] = Path("student_out"),
    arch: Annotated[str, typer.Option(help="bilstm (the paper's), cnn or static (model2vec-like).")] = "bilstm",
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Sentences per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine decay).")] = 1e-3,
    max_rows: Annotated[int, typer.Option(help="Use only the first N rows of the cache.")] = None,
    val_rows: Annotated[int, typer.Option(help="Held-out rows, chosen by id (default min(2000, 10%)).")] = None,
    init_embeddings: Annotated[str, typer.Option(help="teacher (the cache's token embeddings, PCA-projected) "
                                                      "or random.")] = "teacher",
    target_column: Annotated[str, typer.Option(help="Teacher vector to learn: a pooling (mean, cls) or column "
                                                    "name; default the cache's first.")] = None,
    loss: Annotated[str, typer.Option(help="mse (the paper's), cosine or contrastive (in-batch InfoNCE).")] = "mse",
    emb_dim: Annotated[int, typer.Option(help="Embedding width (default 300; static 256).")] = None,
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
) -> None:
    """Train a small student (BiLSTM by default) to reproduce the cached teacher vectors, streaming the cache.

    Reports val MSE, cosine and kNN@10 agreement with the teacher on held-out rows; checkpoints atomically so
    that --resume continues after a crash or Ctrl-C with the same data order.

    Example: tc train-student --shards out/ --out student_out/ --epochs 3 --batch-size 128
    """
    from student.train import TrainConfig, train

    cfg = TrainConfig(shards=str(shards), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                      max_rows=max_rows, val_rows=val_rows, init_embeddings=init_embeddings,
                      target_column=target_column, loss=loss, emb_dim=emb_dim, hidden=hidden, resume=resume,
                      force=force, seed=seed, device=device, precision=precision, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, max_steps=max_steps, num_workers=num_workers, quiet=quiet)
    train(cfg)
