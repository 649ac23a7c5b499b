"""Data-parallel training under torchrun: the process group, the DDP wrapper, rank-0-only side effects.

`train()` calls `setup()`: without torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op and
training is the single-process loop. Under torchrun each rank streams its own equal share of the training rows
(see StreamingCacheDataset.rank_segments), all ranks take the same number of steps per epoch, and only rank 0
evaluates, logs and writes checkpoints and the student folder.

`python -m student.training.distributed ARGS` is torchrun (same arguments) with quiet failure reporting: it is what
`tc train-student --nproc N` runs, so that an error on the ranks reads as the ranks' one line, not as a traceback
of the launcher.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from teacher_cache.base.errors import UserError, first_line
from teacher_cache.base.progress import log


@dataclass
class DistContext:
    """Where this process stands: its rank, how many ranks, its local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that evaluates, logs and writes files."""
        return self.rank == 0


def setup(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"--nproc: local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                             "use at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)  # bound to this rank's GPU (barriers included)
        else:
            dist.init_process_group("gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The model in DistributedDataParallel when several ranks train (gradients averaged), else itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def all_sum(ctx: DistContext, *values: float) -> list[float]:
    """The sums of `values` over all ranks (one small all-reduce); the values themselves with one process."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_any(ctx: DistContext, flags: np.ndarray) -> np.ndarray:
    """The element-wise OR of a boolean array over all ranks (one all-reduce of a byte per element)."""
    if not ctx.enabled:
        return flags
    tensor = torch.from_numpy(flags.astype(np.uint8)).to(ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.cpu().numpy().astype(bool)


def barrier(ctx: DistContext) -> None:
    """Wait until every rank is here (a no-op with one process)."""
    if ctx.enabled:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End a rank's process after shutdown(), skipping interpreter teardown.

    With torch 2.13 on CPU, a DDP rank that has left the process group still dies of SIGABRT ("terminate called
    without an active exception") in about 1 exit in 8 while Python finalises, which torchrun reports as a failed
    run. Everything is written and flushed by then, so the rank leaves with os._exit.
    """
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def check_world_size(state: dict | None, ctx: DistContext, where: str) -> None:
    """Refuse (one line) to resume, on another number of processes, a checkpoint taken mid-epoch that does not
    say which rows of its epoch were trained on (made before elastic resumes); any other is resumed. `where`
    names the checkpoint folder (e.g. student_out/checkpoint, or a store URL's)."""
    saved = (state or {}).get("world_size", 1)
    if state is None or saved == ctx.world_size:
        return
    if state.get("batches_done") and "epoch_done" not in state:
        raise UserError(f"--resume: the checkpoint in {where} was made by {saved} process(es), this run has "
                        f"{ctx.world_size}; resume it with --nproc {saved}")
    log(f"--resume: the checkpoint was made by {saved} process(es), this run has {ctx.world_size}: the rest of its "
        "epoch is split afresh between them (no row of it repeated or left out)", quiet=not ctx.is_main)


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """The command that starts `python -m module args` on `nproc` local processes under torchrun."""
    return [sys.executable, "-m", "student.training.distributed", "--standalone", "--nproc-per-node", str(nproc),
            "-m", module, *args]


def quiet_torchrun(argv: list[str]) -> int:
    """Run torchrun with `argv`; on a rank's failure return its exit code without the launcher's traceback.

    Ctrl-C: the ranks run in their own sessions, so the terminal's SIGINT reaches the agent only; it forwards one
    SIGINT to every rank (they checkpoint and stop at the same step) and waits for them, then this returns 130.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks report their own errors
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would set, without its warning
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        code = exc.get_first_failure()[1].exitcode or 1
        return 128 - code if code < 0 else code  # a rank killed by signal N reads as 128+N
    except SignalException:
        return 130
    except Exception as exc:  # rendezvous or launch failure: one line
        print(f"error: --nproc: torchrun failed ({first_line(exc)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(quiet_torchrun(sys.argv[1:]))
