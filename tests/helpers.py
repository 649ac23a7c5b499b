"""Helpers shared by tests: run the CLI in-process and capture its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `tc ARGS` in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of a CLI run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_line(code: int, err: str, *needles: str) -> str:
    """Assert a CLI run failed with exactly one `error:` line (no traceback) holding every needle; return it."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tc_subprocess(*args: str, **kwargs) -> subprocess.Popen:
    """Start `tc ARGS` as a separate process (for SIGKILL / SIGINT tests)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def shard_digests(directory: Path) -> dict[str, str]:
    """file -> sha256 of every shard the manifest lists."""
    import json

    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    return {s["file"]: s["sha256"] for s in manifest["shards"]}
