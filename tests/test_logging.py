"""Messages go through `logging` ("tc" and its children): a library caller decides what is shown, the `tc` command
prints them on stderr, and --quiet keeps the data warnings only."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import run_cli


@pytest.fixture
def tc_logger():
    """The "tc" logger, left as it was found."""
    logger = logging.getLogger("tc")
    before = logger.level, logger.propagate, list(logger.handlers)
    yield logger
    logger.setLevel(before[0])
    logger.propagate = before[1]
    assert logger.handlers == before[2]


@pytest.fixture
def corpus(tmp_path):
    """Two sentences and a blank line: the encode warns 'skipped 1 blank lines'."""
    path = tmp_path / "c.txt"
    path.write_text("a fine sentence\n\nanother fine sentence\n")
    return path


def encode_cfg(corpus, teacher_dir, out, **kw):
    from teacher_cache.encode.run import EncodeConfig

    # --max-length 9999 is more than the teacher reads: a warning before anything is encoded
    return EncodeConfig(corpus=[str(corpus)], out=out, teacher=str(teacher_dir), max_length=9999, precision="fp32",
                        quiet=False, **kw)


def test_each_module_logs_to_a_child_of_tc():
    from teacher_cache.base.progress import logger_for

    assert logger_for("teacher_cache.encode.run").name == "tc.cache.encode.run"
    assert logger_for("student.training.train").name == "tc.student.training.train"
    assert logger_for("finetune").name == "tc.finetune"
    assert logger_for("pipeline.commands.cache").name == "tc.pipeline.commands.cache"
    assert logger_for("__main__").name == "tc"


def test_a_library_caller_can_silence_every_message(teacher_dir, corpus, tmp_path, capsys, tc_logger):
    from teacher_cache.encode.run import encode_corpus

    tc_logger.setLevel(logging.ERROR)
    capsys.readouterr()
    manifest = encode_corpus(encode_cfg(corpus, teacher_dir, tmp_path / "o"))
    assert manifest.rows == 2 and manifest.extra["corpus_stats"]["blank_lines"] == 1
    assert capsys.readouterr().err == ""  # quiet=False, and yet no progress, no status line, no warning


def test_a_library_caller_logging_at_info_sees_the_status_lines(teacher_dir, corpus, tmp_path, caplog, capsys):
    from teacher_cache.encode.run import encode_corpus

    caplog.set_level(logging.INFO, logger="tc")
    encode_corpus(encode_cfg(corpus, teacher_dir, tmp_path / "o"))
    encode_corpus(encode_cfg(corpus, teacher_dir, tmp_path / "o"))
    by_level = {(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records}
    assert (logging.WARNING, "warning") in by_level and (logging.INFO, "encode") in by_level  # progress at INFO
    messages = caplog.messages
    assert "warning: skipped 1 blank lines" in messages
    assert sum("cache already complete (2 rows, checksums match); nothing to do" in m for m in messages) == 1
    assert {r.name for r in caplog.records} <= {"tc.cache.encode.run", "tc.cache.encode.batching",
                                                "tc.cache.encode.token_outputs"}
    assert "encode:" not in capsys.readouterr().err  # a progress line off a terminal goes through logging only


def test_by_default_a_library_caller_sees_warnings_and_no_info():
    """No logging configured (a notebook, a script): logging's last-resort handler prints the warnings alone."""
    code = ("from teacher_cache.base.progress import Progress, log, warn\n"
            "log('a status line')\nwarn('rows cut')\n"
            "p = Progress('encode', 3)\np.update(3)\np.close()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: rows cut\n" and proc.stdout == ""


def test_the_cli_prints_status_lines_and_quiet_keeps_the_warnings(teacher_dir, corpus, tmp_path, capsys, tc_logger):
    base = ["encode", "--corpus", corpus, "--teacher", teacher_dir, "--max-length", "9999", "--precision", "fp32"]
    warning = "warning: --max-length 9999: the teacher reads at most 128 word-pieces"
    code, out, err = run_cli(capsys, *base, "--out", tmp_path / "a")
    assert code == 0, err
    assert err.count(warning) == 1 and err.count("warning: skipped 1 blank lines") == 1
    assert "encode: 2" in err and err.count("rows x 32") == 1 and out == ""  # progress, then the summary

    code, out, err = run_cli(capsys, *base, "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    assert err.count(warning) == 1 and err.count("warning: skipped 1 blank lines") == 1
    assert "encode:" not in err and "rows x" not in err and out == ""

    for _ in range(2):  # --quiet ended with its run; main() run again adds no second handler
        code, _, err = run_cli(capsys, *base, "--out", tmp_path / "a")
        assert code == 0, err
        assert err.count(warning) == 1 and err.count("nothing to do") == 1, err
    assert tc_logger.handlers == [] and tc_logger.level == logging.NOTSET and tc_logger.propagate
