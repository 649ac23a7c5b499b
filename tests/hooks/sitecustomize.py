"""Test hooks, run at start-up by every Python process a test starts with this folder first on PYTHONPATH (the
torchrun ranks of tests/test_scale_ddp.py, the Ray workers of tests/test_scale_ray.py), so that no test hook lives
in the shipped code.

- TC_DDP_TRACE_IDS=<folder>: each training rank appends the cache ids of every batch it trains on, one batch a
  line, to <folder>/rank-<r>.txt.
- TC_DDP_NAN_AT=<rank>:<step>: that training rank's step <step> (1-based) returns a NaN loss, as if it alone had
  diverged (tests/test_diverged.py: the ranks must agree to stop).
- TC_SIGTERM_AT_FIRST_EVAL=1: tc train-student's first evaluation (step 0, before the loop and so before its first
  checkpoint) sends the process SIGTERM, which kills it there (tests/test_diverged.py: --force keeps the earlier
  student until the new run's first save).
- TC_RAY_CRASH_ONCE=<file>: when that file holds '<marker file>:<shard index>', the Ray worker that starts that
  shard exits (os._exit) the first time, leaving the marker file; Ray restarts it and retries the shard.
"""

from __future__ import annotations

import os


def trace_training_ids(folder: str) -> None:
    """Wrap student.training.train.train_step so that this rank records the ids of each batch."""
    from pathlib import Path

    import student.training.train as train

    path = Path(folder) / f"rank-{os.environ['RANK']}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    step = train.train_step

    def traced(model, batch, *args, **kwargs):
        loss = step(model, batch, *args, **kwargs)
        with open(path, "a") as fh:
            fh.write(" ".join(map(str, batch.ids.tolist())) + "\n")
        return loss

    train.train_step = traced


def nan_loss_at(control: str) -> None:
    """Wrap student.training.train.train_step: rank <rank> of `control` ('<rank>:<step>') returns NaN at <step>."""
    import student.training.train as train

    rank, at = (int(x) for x in control.split(":"))
    step, seen = train.train_step, [0]

    def poisoned(model, batch, *args, **kwargs):
        loss = step(model, batch, *args, **kwargs)
        seen[0] += 1
        return loss * float("nan") if int(os.environ["RANK"]) == rank and seen[0] == at else loss

    train.train_step = poisoned


def sigterm_at_first_eval() -> None:
    """Wrap student.training.train.evaluate so that its first call sends this process SIGTERM (as a scheduler
    would; outside the loop no handler defers it, so the process dies there)."""
    import signal

    import student.training.train as train

    evaluate = train.evaluate

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    train.evaluate = terminated


def crash_once(control: str) -> None:
    """Wrap ShardEncoder.encode so that the worker starting the shard named in `control` dies once."""
    from teacher_cache.encode import ray_engine as ray_encode

    encode = ray_encode.ShardEncoder.encode

    def encode_or_crash(self, index, *args, **kwargs):
        hook = open(control).read().strip() if os.path.exists(control) else ""
        if hook:
            marker, at = hook.rsplit(":", 1)
            if int(at) == index and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
        return encode(self, index, *args, **kwargs)

    ray_encode.ShardEncoder.encode = encode_or_crash


if os.environ.get("TC_DDP_TRACE_IDS") and "RANK" in os.environ:
    trace_training_ids(os.environ["TC_DDP_TRACE_IDS"])
if os.environ.get("TC_DDP_NAN_AT") and "RANK" in os.environ:
    nan_loss_at(os.environ["TC_DDP_NAN_AT"])
if os.environ.get("TC_SIGTERM_AT_FIRST_EVAL"):
    sigterm_at_first_eval()
if os.environ.get("TC_RAY_CRASH_ONCE"):
    crash_once(os.environ["TC_RAY_CRASH_ONCE"])
