"""The `tc` command line: one list of commands (pipeline/commands/, one module per family), and `main`, which
turns every error into one line on stderr and an exit code (pipeline/failures.py)."""

from __future__ import annotations

import os
import sys

import typer

from pipeline import failures
from pipeline.commands import cache, evaluate, export, train
from pipeline.commands import finetune as finetune_commands
from pipeline.logs import cli_logging
from teacher_cache.base.errors import Terminated, UserError, printable

COMMANDS = [
    ("encode", cache.encode),
    ("verify", cache.verify),
    ("info", cache.info),
    ("vocab", cache.vocab),
    ("compact", cache.compact),
    ("train-student", train.train_student),
    ("probe", evaluate.probe),
    ("eval", evaluate.eval_),
    ("demo", evaluate.demo),
    ("finetune", finetune_commands.finetune),
    ("cache-logits", finetune_commands.cache_logits),
    ("predict", finetune_commands.predict),
    ("export", export.export),
]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="teacher-cache: cache a BERT teacher's sentence vectors once, distil small students from them.")
for name, command in COMMANDS:
    app.command(name)(command)

INTERRUPTED = "interrupted: complete shards and checkpoints are kept; rerun the same command to resume"


def interrupted(code: int = 130) -> int:
    """Report a Ctrl-C (130) or a SIGTERM (143), work already saved, and return that exit code."""
    if "RANK" not in os.environ:  # under torchrun the launching `tc` says it once, not every rank
        text = INTERRUPTED if code == 130 else INTERRUPTED.replace("interrupted:", "terminated (SIGTERM):")
        print(text, file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line on stderr and an exit code; the "tc" log
    messages are printed on stderr meanwhile (pipeline/logs.py)."""
    with cli_logging():
        return run_command(argv)


def run_command(argv: list[str] | None) -> int:
    """Run one command; every error becomes one line on stderr and an exit code."""
    try:
        result = app(args=argv, prog_name="tc", standalone_mode=False)
        if result in (130, 143):  # commands turn KeyboardInterrupt into Exit(130) after saving their work
            return interrupted(result)
        return result if isinstance(result, int) else 0
    except UserError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)  # a file name's undecodable bytes as \xff
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
    except Exception as exc:  # a bug, or an error nobody turned into a UserError: one line, traceback in a file
        return failures.internal_error(exc)


def run() -> None:
    """Console-script wrapper around main()."""
    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C landing in main's own handlers
        code = interrupted()
    if code in (130, 143):
        # Interrupted mid-work, threads may still be inside native code (the tokenizer prefetch, torch's pool), and
        # interpreter teardown then aborts now and then (SIGABRT, seen in CI as exit -6; a late second Ctrl-C gave
        # -2). Everything is saved and flushed by now: leave without teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if "RANK" in os.environ:  # a torchrun rank: leave without interpreter teardown, where gloo can abort
        from student.training.distributed import exit_now

        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
