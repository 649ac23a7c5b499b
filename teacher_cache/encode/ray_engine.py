"""`tc encode --engine ray`: the same cache as the local path, with the teacher passes spread over Ray actors.

The driver (this process) does everything that defines the cache, exactly as the local path does: it reads the
corpus with the same reader, cuts it into the same shard-sized chunks (skipping complete shards on a rerun),
numbers the rows, writes every shard with ShardWriter and updates the manifest, in shard order. The actors only
turn a chunk of texts into vectors: each holds one teacher and a BatchEncoder (tokenise, length-sort, token-budget
batches, pool) and encodes whole shards. Finished shards that arrive out of order wait in a small buffer.

So a Ray cache and a local one have the same shard boundaries, ids, texts, columns and manifest; with the same
precision the vectors agree to float rounding (bit for bit when both sides run the same kernels).

Why Ray core actors rather than `ray.data.map_batches`: the shard boundaries come from one sequential pass over
the corpus (blank lines skipped, files concatenated), which a Ray Data source cannot split without reading every
file up to its offset, and Ray Data has no source that streams from a driver-side generator without first
materialising the corpus. Ray's ActorPool, fed by the driver as slots free up, keeps memory bounded (a few
shards in flight) and gets Ray's fault tolerance: a killed actor is restarted and its queued shards retried
(`max_restarts`, `max_task_retries`); a killed driver loses at most the shards not yet written, and a rerun resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from teacher_cache.base.errors import CacheError, first_line
from teacher_cache.base.progress import Progress, log
from teacher_cache.base.signals import sigterm_as_interrupt, take_sigterm
from teacher_cache.encode.batching import BatchEncoder, resolve_precision
from teacher_cache.encode.config import EncodeConfig, RayOptions
from teacher_cache.encode.run import EncodeRun, start_encode
from teacher_cache.encode.teacher import load_teacher
from teacher_cache.manifest import CacheManifest

INSTALL_HINT = 'pip install -e ".[ray]"'
MAX_RESTARTS = 3  # per actor; its queued shards are retried on the restarted actor
QUEUED_PER_WORKER = 2  # shards queued on each actor, so it never waits for the driver


def import_ray():
    """The ray module, or a one-line CacheError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CacheError(f"--engine ray: Ray is not installed; install the extra with: {INSTALL_HINT}") from None
    return ray


class ShardEncoder:
    """One Ray actor's work: hold a teacher and encode whole shards of texts (wrapped by ray.remote at run time)."""

    def __init__(self, teacher: str, teacher_hash: str, device: str, online: bool, poolings: list[str],
                 max_length: int, normalize: bool, max_tokens: int | None, batch_size: int | None, threads: int):
        """Load the teacher on this worker; remember a one-line error instead of dying (see `ready`)."""
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the Rust tokenizer's pool, before it starts
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if threads == 1 else "true")
        import torch

        torch.set_num_threads(threads)
        self.error: str | None = None
        self.teacher_lock = threading.Lock()  # GPU workers take 2 shards at once: one tokenises, one runs
        try:
            loaded = load_teacher(teacher, device, online)
            if loaded.weights_hash() != teacher_hash:
                raise CacheError(f"--teacher {teacher}: the worker on {os.uname().nodename} loaded other weights "
                                 "than the driver; give every node the same teacher files")
            self.encoder = BatchEncoder(loaded, poolings, max_length, normalize, "fp32", max_tokens, batch_size)
        except CacheError as exc:
            self.error = str(exc)

    def ready(self) -> str | None:
        """None once the teacher is loaded, else the one-line reason it could not be."""
        return self.error

    def resolve_precision(self, texts: list[str], quiet: bool) -> str:
        """Resolve --precision auto on this worker's hardware, calibrating on `texts` as the local path does."""
        return resolve_precision(self.encoder, self.encoder.tokenize(texts), quiet)

    def encode(self, index: int, texts: list[str], precision: str) -> tuple[int, dict, np.ndarray, float]:
        """(index, pooling -> float32 vectors in input order, word-pieces per row, seconds) for one shard."""
        started = time.perf_counter()
        token_ids = self.encoder.tokenize(texts)  # overlaps the other shard's forward passes (GPU workers)
        with self.teacher_lock:
            self.encoder.precision = precision  # passed with every call, so a restarted actor needs no state
            vectors = self.encoder.encode_tokenized(token_ids)
        n_tokens = np.fromiter((len(x) for x in token_ids), dtype=np.int32, count=len(token_ids))
        return index, vectors, n_tokens, time.perf_counter() - started


def actor_concurrency(device: str) -> int:
    """Shards one actor works on at once: 2 on a GPU (tokenising the next while the GPU runs), 1 on a CPU core."""
    return 2 if device == "cuda" else 1


def connect(ray, options: RayOptions, quiet: bool) -> bool:
    """Join the cluster at options.address, or start a local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
    import logging

    try:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=not quiet,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CacheError(f"--ray-address {options.address}: cannot connect to Ray ({first_line(exc)})") from None
    return True


def worker_count(ray, options: RayOptions) -> int:
    """--workers, or as many actors as the cluster has GPUs (GPU workers) or CPUs (CPU workers)."""
    if options.workers is not None:
        return options.workers
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        count = int(resources.get("GPU", 0) // options.gpus_per_worker)
        if count == 0:
            raise CacheError(f"--gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has no GPU")
        return count
    return max(1, int(resources.get("CPU", 1)))


def check_options(cfg: EncodeConfig, options: RayOptions) -> str:
    """Reject contradictory flags in one line; return the device the workers use."""
    if options.workers is not None and options.workers < 1:
        raise CacheError(f"--workers {options.workers}: must be at least 1")
    if options.gpus_per_worker < 0:
        raise CacheError(f"--gpus-per-worker {options.gpus_per_worker:g}: must not be negative")
    if cfg.device.startswith("cuda") and options.gpus_per_worker == 0:
        raise CacheError("--device cuda with --engine ray: add --gpus-per-worker 1 so Ray gives each worker a GPU")
    return "cuda" if options.gpus_per_worker > 0 else "cpu"


def ray_error(ray, exc: Exception) -> CacheError:
    """A one-line error for a worker that failed for good (complete shards are kept for a rerun)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CacheError):
        return cause
    text = str(cause or exc).strip().splitlines()
    first = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return CacheError(f"--engine ray: a worker failed ({first.strip()[:200]}); complete shards are kept: "
                      "rerun the same command to resume")


def encode_corpus_ray(cfg: EncodeConfig, options: RayOptions) -> CacheManifest:
    """Encode the corpus on a pool of Ray actors into the same cache `encode_corpus` writes, resuming likewise.

    SIGTERM is handled as Ctrl-C: Ray is shut down, complete shards are kept, and the CLI exits 143 with one line.
    When this call starts a local Ray instance, a watchdog (teacher_cache/encode/ray_watchdog.py) stops its processes
    should this process be killed outright (SIGKILL), which Ray alone does not fully do."""
    ray = import_ray()
    device = check_options(cfg, options)
    run = start_encode(cfg, device="cpu")  # the driver's teacher only names, hashes and exports the tokenizer
    with run:  # the driver holds the folder lock until the end
        if run.already_complete:
            return run.manifest
        with sigterm_as_interrupt():
            owned = not ray.is_initialized()  # this call starts (or joins) Ray, and so shuts it down
            watchdog = start_watchdog() if owned else None  # before ray.init: covers its start-up too
            try:
                connect(ray, options, cfg.quiet)
                take_sigterm()  # ray.init installs its own handlers (a stack dump and exit on SIGTERM)
                return drive(ray, run, options, device)
            except ray.exceptions.RayError as exc:
                raise ray_error(ray, exc) from None
            finally:
                if owned and ray.is_initialized():
                    ray.shutdown()
                stop_watchdog(watchdog)


def start_watchdog() -> subprocess.Popen | None:
    """Start teacher_cache/encode/ray_watchdog.py for this process (Linux), or None where it cannot run."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return None
    script = Path(__file__).with_name("ray_watchdog.py")
    try:
        # -I: stdlib only, no PYTHONPATH or site hooks; own session: a Ctrl-C to the terminal's group spares it
        return subprocess.Popen([sys.executable, "-I", str(script), str(os.getpid())], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    """Tell the watchdog Ray is shut down (close its pipe): it stops any Ray process still running, then exits."""
    if watchdog is None:
        return
    try:
        watchdog.stdin.close()
        watchdog.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass  # it still exits on its own once this process is gone


def start_workers(ray, run: EncodeRun, options: RayOptions, device: str) -> list:
    """Start the actors and wait until each holds the teacher (one-line error if one cannot load it)."""
    cfg, n = run.cfg, worker_count(ray, options)
    threads = 1  # one CPU per CPU worker: scale with --workers, as Ray schedules by CPU
    actor = ray.remote(ShardEncoder).options(num_cpus=threads, num_gpus=options.gpus_per_worker,
                                             max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                                             max_concurrency=actor_concurrency(device))
    teacher = run.manifest.teacher  # a hub name, or the teacher folder as an absolute path (workers run elsewhere)
    actors = [actor.remote(teacher, run.manifest.teacher_hash, device, cfg.online, run.poolings, run.max_length,
                           run.normalize, cfg.max_tokens, cfg.batch_size, threads) for _ in range(n)]
    for error in ray.get([a.ready.remote() for a in actors]):
        if error:
            raise CacheError(error)
    log(f"ray: {n} worker(s) on {device}, {options.gpus_per_worker:g} GPU each")
    return actors


def drive(ray, run: EncodeRun, options: RayOptions, device: str) -> CacheManifest:
    """Feed shard-sized chunks to the actors, write the finished shards in order, and complete the manifest."""
    cfg = run.cfg
    actors = start_workers(ray, run, options, device)
    chunks: Iterator[tuple[int, list[str]]] = enumerate(run.chunks, start=len(run.manifest.shards))
    if run.precision == "auto":  # resolved once, on one worker, before any shard is encoded
        first = next(chunks, None)
        if first is not None:
            run.set_precision(ray.get(actors[0].resolve_precision.remote(first[1], cfg.quiet)))
            log(f"precision: {run.precision} (resolved on worker 0, used by every worker)")
            chunks = _prepend(first, chunks)
    progress = Progress("encode", None, quiet=cfg.quiet, start=run.done_rows)
    # Ray's ActorPool does the scheduling; each actor appears QUEUED_PER_WORKER times, so it always has its next
    # shard queued. Chunks are submitted only as slots free up: the corpus is never read ahead further than that.
    from ray.util import ActorPool

    pool = ActorPool([actor for actor in actors for _ in range(QUEUED_PER_WORKER)])
    texts_of: dict[int, list[str]] = {}  # submitted, not yet written
    done: dict[int, tuple] = {}  # encoded, waiting for the shards before them
    next_index = len(run.manifest.shards)

    def absorb(result: tuple[int, dict, np.ndarray, float]) -> None:
        """Keep one encoded shard, then write every shard that is next in order."""
        nonlocal next_index
        index, vectors, n_tokens, seconds = result
        done[index] = (vectors, n_tokens)
        run.timing["encode_s"] += seconds
        while next_index in done:
            vectors, n_tokens = done.pop(next_index)
            run.commit(texts_of.pop(next_index), vectors, n_tokens)
            progress.update(run.manifest.shards[-1].rows, tokens=run.manifest.shards[-1].n_tokens)
            next_index += 1

    for index, texts in chunks:
        while not pool.has_free():
            absorb(pool.get_next_unordered())
        texts_of[index] = texts
        pool.submit(lambda actor, item: actor.encode.remote(*item, run.precision), (index, texts))
    while pool.has_next():
        absorb(pool.get_next_unordered())
    progress.close()
    return run.finish(engine="ray", workers=len(actors), device=device)


def _prepend(item: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    """`item`, then the rest of the iterator."""
    yield item
    yield from rest

