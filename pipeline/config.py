"""The settings of `tc probe` (ProbeConfig) and `tc demo` (DemoConfig), each declared once: the command-line
options are built from these fields (teacher_cache/base/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from teacher_cache.base.settings import EPOCHS, SEED, Checked, count, positive, setting
from teacher_cache.shard_cache import parse_size


@dataclass
class ProbeConfig(Checked):
    """Knobs of `tc probe`."""

    shards: str = setting("out", "Teacher cache (from tc encode): a folder or a store URL (s3://bucket/prefix).")
    student: str = setting("student_out", "Student folder (from tc train-student), or the store URL it was trained "
                                          "into (s3://bucket/prefix; downloaded first).")
    cache_dir: str | None = setting(None, "A remote --shards' local shard cache (default: under the user cache dir).")
    cache_limit: int | None = setting(None, "Most bytes a remote --shards' local shard cache holds (default 20GB).",
                                      parse=parse_size)
    k: int = setting(10, "Neighbours compared per query.", check=count(1))
    queries: int | None = setting(None, "Held-out query rows (default: 1000, or a fifth of the rows probed if "
                                        "fewer).", check=count(1))
    index: str = setting("auto", "auto (exact; HNSW from 50,000 queries, where its build pays), flat, ivf or hnsw.")
    report: str = setting("probe", "Folder for report.json, report.md and PNG plots, or a store URL "
                                   "(s3://bucket/prefix; written locally, then uploaded, report.json last).")
    max_rows: int | None = setting(20_000, "Probe a random sample of this many cached rows (0 = all).", check=count(0))
    column: str | None = setting(None, "Cache vector column or pooling (default: the first).")
    version: int | None = setting(None, "Cache version to probe (default the newest; `tc info` lists them).",
                                  check=count(1))
    seed: int = setting(0, "Seed for the row sample and the query split.", check=SEED)
    batch_size: int = setting(128, "Sentences per student encode batch.", check=count(1))
    worst: int = setting(10, "Worst queries shown side by side in the report.", check=count(0))
    query_texts: list[str] = setting(help="A sentence of your own; its neighbours are shown (repeatable). Loads "
                                          "the teacher unless --teacher-free.", factory=list, flag="--query")
    teacher_free: bool = setting(False, "With --query: show the student's side only.")
    teacher: str | None = setting(None, "Teacher for --query (default: the one the cache names).")
    quiet: bool = setting(False, "No progress on stderr.")


@dataclass
class DemoConfig(Checked):
    """Knobs of `tc demo`; the defaults finish in a few minutes on 2 CPU cores."""

    out: Path = setting(Path("demo"), "Folder for the cache, student, probe report and summary.")
    corpus: list[str] | None = setting(None, "Corpus file(s) (default: the bundled 5,000 sentences).")
    recipe: str = setting("static", "Student recipe: static, compact, paper or paper-512 (`tc train-student --help`).")
    arch: str | None = setting(None, "Student: bilstm, cnn or static.")
    epochs: int | None = setting(None, "Training epochs.", check=EPOCHS)
    lr: float | None = setting(None, "Peak learning rate.", check=positive)
    max_rows: int | None = setting(None, "Use only the first N corpus rows.", check=count(1))
    force: bool = setting(False, "Re-encode even if <out>/cache holds another cache.")
    quiet: bool = setting(False, "No progress lines.")
