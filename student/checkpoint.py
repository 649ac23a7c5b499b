"""Training checkpoints (atomic, one file) and the output-folder rules: refuse to clobber, resume only alike."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from student.config import CONFIG_NAME
from student.tokenizer import TOKENIZER_FILES
from teacher_cache.errors import CacheError

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
# What a training run writes into --out; --force replaces these and nothing else.
OUTPUT_FILES = (CONFIG_NAME, "model.safetensors", "training_args.json", "metrics.json", "README.md", *TOKENIZER_FILES)


def checkpoint_file(out: str | Path) -> Path:
    """Path of the checkpoint inside an output folder."""
    return Path(out) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(out: str | Path, state: dict) -> Path:
    """Write `state` to <out>/checkpoint/checkpoint.pt atomically (temporary file, fsync, rename)."""
    path = checkpoint_file(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    summary = {k: state[k] for k in ("epoch", "batches_done", "step", "rows_seen") if k in state}
    (path.parent / "trainer_state.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def setting_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved != current' for every setting that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} != {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def load_checkpoint(out: str | Path, settings: dict) -> dict:
    """The checkpoint in `out`, refused in one line when missing, unreadable or made with other settings."""
    path = checkpoint_file(out)
    if not path.exists():
        raise CacheError(f"--resume: no checkpoint in {path.parent}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CacheError(f"--resume: {path}: unreadable checkpoint ({first[:200]})") from None
    differences = setting_differences(state.get("settings", {}), settings)
    if differences:
        more = f" (and {len(differences) - 2} more)" if len(differences) > 2 else ""
        raise CacheError(f"--resume: the checkpoint in {path.parent} was made with other settings "
                         f"({'; '.join(differences[:2])}{more}); rerun with the same flags or pass --force "
                         "(without --resume) to start over")
    return state


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies inside it."""
    return a == b or b in a.parents


def refuse_unsafe_out(out: Path, other: Path, other_flag: str) -> list[str]:
    """Refuse an --out that is a file or overlaps `other` (the input folder); return what --out holds now."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out}: is a file, not a folder")
    if other.exists():
        a, b = out.resolve(), other.resolve()
        if _inside(a, b) or _inside(b, a):
            raise CacheError(f"--out {out}: overlaps the {other_flag} folder {other}; choose another folder")
    return sorted(p.name for p in out.iterdir()) if out.is_dir() else []


def not_empty(out: Path, present: list[str]) -> CacheError:
    """The one-line refusal of an --out that holds other things."""
    shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
    return CacheError(f"--out {out}: not empty (holds {shown}); choose an empty folder or pass --force")


def check_output(out: str | Path, shards: str | Path, resume: bool, force: bool) -> None:
    """Refuse an --out that would lose something: the cache itself, another folder's files, an earlier run."""
    out, shards = Path(out), Path(shards)
    if resume and force:
        raise CacheError("--resume and --force: choose one (--force starts over, --resume continues)")
    present = refuse_unsafe_out(out, shards, "cache")
    if resume:
        if not checkpoint_file(out).exists() and (out / "training_args.json").exists():
            raise CacheError(f"--resume: {out} holds a finished student and no checkpoint; nothing to resume "
                             "(pass --force without --resume to train again)")
        if not checkpoint_file(out).exists():
            raise CacheError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}; start without --resume")
        return
    if not present or force:
        return
    if CHECKPOINT_DIR in present or "training_args.json" in present:
        raise CacheError(f"--out {out}: holds an earlier training run; pass --resume to continue it "
                         "or --force to start over")
    raise not_empty(out, present)


def clear_output(out: str | Path, names: tuple[str, ...] = OUTPUT_FILES) -> None:
    """Remove what an earlier run wrote into `out` (its own files `names` and checkpoint only)."""
    out = Path(out)
    for name in names:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def remove_checkpoint(out: str | Path) -> None:
    """Delete the checkpoint once the finished student is written."""
    shutil.rmtree(Path(out) / CHECKPOINT_DIR, ignore_errors=True)
