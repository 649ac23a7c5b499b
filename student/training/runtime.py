"""Where and how a run executes: the device, autocast precision, and Ctrl-C / SIGTERM deferred to a checkpoint."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch

from teacher_cache.base.errors import Terminated, UserError


def resolve_device(name: str) -> torch.device:
    """torch.device for --device, refusing CUDA where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: choose cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: choose cpu or cuda")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype (bf16 or fp16 on CUDA), or None for plain fp32."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise UserError(f"--precision {precision}: autocast is used on CUDA only; use fp32 or auto on CPU")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextmanager
def deferred_interrupt():
    """A first Ctrl-C or SIGTERM only sets flag['hit'] (the loop checkpoints at the next step); a second interrupts.

    SIGTERM is what Docker, Kubernetes and Slurm send before they kill: it is handled as Ctrl-C is, and
    flag['signal'] remembers which one came (the CLI then exits 143 instead of 130).
    """
    flag = {"hit": False, "signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        """First signal: ask for a checkpoint; second: interrupt now."""
        if flag["hit"]:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        flag["hit"], flag["signal"] = True, signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
