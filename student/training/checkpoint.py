"""Training checkpoints (atomic, one file) and what --out means to a training run (the rules themselves:
teacher_cache/base/out_folder.py): refuse to clobber, resume only alike."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from student.config import CONFIG_NAME
from student.tokenizer import TOKENIZER_FILES
from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, UserError, first_line, reason
from teacher_cache.base.out_folder import OutFolder
from teacher_cache.base.safe_paths import real_folder, remove_tree

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
# What a training run writes into --out; --force replaces these and nothing else.
OUTPUT_FILES = (CONFIG_NAME, "model.safetensors", "training_args.json", "metrics.json", "README.md", "modules.json",
                "config_sentence_transformers.json", *TOKENIZER_FILES)
OUTPUT_DIRS = ("0_StaticEmbedding",)  # student/st_config.py: a static student's sentence-transformers module


def checkpoint_file(out: str | Path) -> Path:
    """Path of the checkpoint inside an output folder."""
    return Path(out) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(out: str | Path, state: dict) -> Path:
    """Write `state` to <out>/checkpoint/checkpoint.pt atomically (temporary file, fsync, rename)."""
    path = checkpoint_file(out)
    summary = {k: state[k] for k in ("epoch", "batches_done", "step", "rows_seen") if k in state}
    try:
        real_folder(path.parent)  # a symlinked checkpoint/ is replaced by a folder, never written through
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
        with atomic_path(path.parent / "trainer_state.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # a first checkpoint that failed leaves nothing that looks like a run
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was saved yet"
        raise UserError(f"{path}: cannot write the checkpoint ({reason(exc)}); {kept}") from None
    return path


def flatten(settings: dict, prefix: str = "") -> dict:
    """{'cache': {'rows': 3}} -> {'cache.rows': 3}, so a difference names the very setting."""
    flat: dict = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def setting_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved != current' for every setting that differs (nested ones named as 'cache.fingerprint')."""
    saved, current = flatten(saved), flatten(current)
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} != {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def load_checkpoint(out: str | Path, settings: dict, shown: str | None = None) -> dict:
    """The checkpoint in `out`, refused in one line when missing, unreadable or made with other settings; `shown`
    names its folder in those lines (a store URL's, when `out` is the staging folder it was downloaded into)."""
    path = checkpoint_file(out)
    where = shown or str(path.parent)
    if not path.exists():
        raise CacheError(f"--resume: no checkpoint in {where}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so in one line
        raise CacheError(f"--resume: {where}/{CHECKPOINT_FILE}: unreadable checkpoint ({first_line(exc)})") from None
    differences = setting_differences(state.get("settings", {}), settings)
    if differences:
        more = f" (and {len(differences) - 2} more)" if len(differences) > 2 else ""
        raise CacheError(f"--resume: the checkpoint in {where} was made with other settings "
                         f"({'; '.join(differences[:2])}{more}); rerun with the same flags or pass --force "
                         "(without --resume) to start over")
    return state


def training_out(out: str | Path, shards: str | Path | None = None, command: str = "tc train-student") -> OutFolder:
    """The --out of a training run: its own files, its input the cache folder `shards`."""
    return OutFolder(out, command, own=OUTPUT_FILES, own_dirs=(CHECKPOINT_DIR, *OUTPUT_DIRS),
                     inputs={} if shards is None else {"cache": Path(shards)})


EARLIER_RUN = "holds an earlier training run; pass --resume to continue it or --force to start over"


def earlier_run(present: list[str]) -> str | None:
    """What a not-empty --out is said to hold when it is an earlier training run (None: the plain 'not empty')."""
    return EARLIER_RUN if CHECKPOINT_DIR in present or "training_args.json" in present else None


def check_output(out: str | Path, shards: str | Path | None, resume: bool, force: bool) -> None:
    """Refuse an --out that would lose something: the cache itself, another folder's files, an earlier run."""
    out = Path(out)
    if resume and force:
        raise UserError("--resume and --force: choose one (--force starts over, --resume continues)")
    folder = training_out(out, shards)
    if resume:
        folder.refuse_unsafe()
        if not checkpoint_file(out).exists() and (out / "training_args.json").exists():
            raise UserError(f"--resume: {out} holds a finished student and no checkpoint; nothing to resume "
                             "(pass --force without --resume to train again)")
        if not checkpoint_file(out).exists():
            raise UserError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}; start without --resume")
        return
    # what a failed first checkpoint left counts for nothing: nothing to resume, nothing to keep
    unfinished = () if checkpoint_file(out).exists() else (CHECKPOINT_DIR,)
    folder.check(force, ignore=unfinished, earlier=earlier_run)


def clear_output(out: str | Path) -> None:
    """Remove what an earlier training run wrote into `out` (its own files and checkpoint only)."""
    training_out(out).clear_own()


@contextmanager
def hold_output(out: str | Path, shards: str | Path | None, command: str = "tc train-student") -> Iterator[None]:
    """Lock --out for one run (rank 0 alone under torchrun); a second writer is refused in one line naming the first.

    Under the lock, leftovers of a checkpoint that was never completed (a full disk, a kill) are removed, so that
    `--resume` and a fresh start agree on whether there is anything to resume.
    """
    if os.environ.get("RANK", "0") != "0":  # the other ranks never write into --out
        yield
        return
    folder = training_out(out, shards, command)
    with folder.hold():
        leftover = folder.path / CHECKPOINT_DIR
        if (leftover.is_dir() or leftover.is_symlink()) and not checkpoint_file(out).exists():
            remove_tree(leftover)
        yield


def remove_checkpoint(out: str | Path) -> None:
    """Delete the checkpoint once the finished student is written."""
    remove_tree(Path(out) / CHECKPOINT_DIR)
