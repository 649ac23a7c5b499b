"""GLUE comparison (the paper's table): does SRA pre-training beat task-specific distillation alone?

Usage: .venv/bin/python -m benchmarks.glue --sra-student benchmarks/work/students/compact-100k --full
           [--tasks rte,mrpc,stsb,cola,sst2] [--seeds 0,1,2] [--augment 1] [--epochs 3] [--rows random,sra]
           [--section NAME] [--quick] [--report-only]
Example (a CoLA diagnosis beside the full table: rows (1) and (3) only, a higher encoder learning rate):
    .venv/bin/python -m benchmarks.glue --sra-student benchmarks/work/students/compact-100k --tasks cola \
        --rows random,sra --encoder-lr 1e-3 --section cola-encoder-lr-1e-3

Rows per task (students share the head, data order per seed and settings):
(1) the SRA student's architecture, random init, fine-tuned;  (2) the same + task KD (~ Tang et al.'s BiLSTM_SOFT);
(3) the SRA student (tc train-student) fine-tuned;             (4) the same + task KD;
(5) the task teacher: all-MiniLM-L6-v2 + a classification head, fine-tuned once (its logits are the KD targets,
    cached with tc cache-logits, plus --augment Tang et al. variants of every training row).
--full uses every training row, 3 seeds per student row. The kept epoch is chosen on training rows held out for it
(--select holdout), so dev is never used for selection and is reported for every task, with the labelled MRPC and
STS-B test sets. Similarity tasks (STS-B) use the cosine head (the fine-tuned folder stays a sentence encoder).

Resumable: every finished (task, row, seed) is appended to <work>/<settings>/results.jsonl at once and the table
in benchmarks/RESULTS.md (section glue:full, glue:first-N or glue:NAME with --section) is regenerated from that file;
the task teacher and its logits are kept under <work>/teachers/ and shared by every run with the same teacher
settings (a run that changes only the students' settings fine-tunes no teacher again); a rerun with the same
settings skips finished rows, so the benchmark may span sessions (run it with nohup). --quick (200 train / 200 eval
rows, 1 epoch, 1 seed) prints the table without touching RESULTS.md unless --write.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, machine, replace_section
from finetune.config import FinetuneConfig, LogitsConfig
from finetune.students import finetune_student
from finetune.task_data import load_split
from finetune.task_model import load_task_model
from finetune.tasks import TASKS, resolve_data_dir
from finetune.teachers import cache_logits, finetune_teacher, load_finetuned_teacher
from student import Student, StudentConfig
from student.tokenizer import read_tokenizer_files
from teacher_cache.base.atomic import atomic_path

ROWS = {"random": "(1) random init", "random_kd": "(2) random init + task KD", "sra": "(3) SRA student",
        "sra_kd": "(4) SRA student + task KD", "teacher": "(5) task teacher (MiniLM-L6 FT)"}
STUDENT_ROWS = ("random", "random_kd", "sra", "sra_kd")
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"  # a development checkout's sibling folder (--data-dir)
# Published context (different teachers, splits and budgets): Tang et al. 2019, SST-2 test accuracy.
PUBLISHED = [("Tang et al. 2019", "SST-2 test acc", "BiLSTM", 86.7), ("Tang et al. 2019", "SST-2 test acc",
             "BiLSTM_SOFT (task KD + augmentation)", 90.7), ("Tang et al. 2019", "SST-2 test acc", "ELMo", 90.4)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; --quick and --full fill the settings they imply."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sra-student", required=True, type=Path, help="student folder from tc train-student")
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2", help="in this order (cheapest first)")
    p.add_argument("--full", action="store_true", help="every training row, seeds 0,1,2 (the issue's table)")
    p.add_argument("--seeds", default=None, help="comma-separated student seeds (default 0; --full 0,1,2)")
    p.add_argument("--rows", default=",".join(STUDENT_ROWS),
                   help=f"the student rows to run, comma-separated (default all: {','.join(STUDENT_ROWS)})")
    p.add_argument("--section", default=None, help="RESULTS.md section glue:NAME (default glue:full, or "
                   "glue:first-N with --max-train-rows), so a diagnosis does not replace the full table")
    p.add_argument("--max-train-rows", type=int, default=None, help="cap every task's training rows")
    p.add_argument("--max-eval-rows", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="student head learning rate (features head)")
    p.add_argument("--encoder-lr", type=float, default=1e-4, help="student encoder learning rate (features head)")
    p.add_argument("--similarity-lr", type=float, default=5e-4, help="student encoder learning rate, cosine head")
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--augment", type=int, default=1, help="Tang et al. variants per training row in the KD rows")
    p.add_argument("--select", default="holdout", choices=("holdout", "last"), help="how the kept epoch is chosen")
    p.add_argument("--teacher", default=None, help="default: the bundled all-MiniLM-L6-v2")
    p.add_argument("--data-dir", default=str(GLUE_DIR), help="GLUE folder (default ../shared/data/glue beside the "
                                                           "checkout)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "glue")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="200 train / 200 eval rows, 1 epoch, 1 seed, no RESULTS.md")
    p.add_argument("--write", action="store_true", help="write RESULTS.md even with --quick")
    p.add_argument("--report-only", action="store_true", help="regenerate the table from finished rows; train none")
    args = p.parse_args(argv)
    if args.quick:
        args.max_train_rows = args.max_train_rows or 200
        args.max_eval_rows = args.max_eval_rows or 200
        args.epochs = args.teacher_epochs = 1
        args.work = args.work.with_name(args.work.name + "-quick")
    args.seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.full else "0")).split(",")]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for row in args.rows:
        if row not in STUDENT_ROWS:
            p.error(f"--rows {row}: choose from {', '.join(STUDENT_ROWS)}")
    for task in args.tasks:
        if task not in TASKS:
            p.error(f"--tasks {task}: choose from {', '.join(TASKS)}")
    if args.full and args.max_train_rows is not None:
        p.error("--full uses every training row; drop --max-train-rows")
    if args.teacher is None:
        from teacher_cache.encode.teacher import default_teacher_path

        args.teacher = str(default_teacher_path())
    return args


TEACHER_KEYS = ("teacher_epochs", "teacher_lr", "batch_size", "max_train_rows", "max_eval_rows", "select", "teacher")


def teacher_folder(args: argparse.Namespace, task: str) -> Path:
    """Where the task teacher and its logits live: one folder per teacher setting and --augment, shared by runs."""
    settings = {k: getattr(args, k) for k in TEACHER_KEYS} | {"augment": args.augment, "data_dir": str(args.data_dir)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return args.work / "teachers" / digest / task


def settings_of(args: argparse.Namespace) -> dict:
    """What the figures depend on (not the tasks, seeds or rows run): a change starts a new results file."""
    keys = ("epochs", "teacher_epochs", "lr", "encoder_lr", "similarity_lr", "teacher_lr", "batch_size", "kd_alpha",
            "augment", "select", "max_train_rows", "max_eval_rows", "teacher")
    return {**{k: getattr(args, k) for k in keys}, "sra_student": str(args.sra_student.resolve())}


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Results:
    """results.jsonl of one settings fingerprint: finished rows, appended one line each."""

    def __init__(self, folder: Path, settings: dict):
        """Open (or start) the file; it records its settings in settings.json beside it."""
        self.folder, self.path = folder, folder / "results.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def get(self, task: str, row: str, seed: int) -> dict | None:
        """The finished row, or None."""
        return next((r for r in self.rows if (r["task"], r["row"], r["seed"]) == (task, row, seed)), None)

    def add(self, record: dict) -> None:
        """Append a finished row (one line, flushed)."""
        self.rows.append(record)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def random_student(sra: Path, out: Path, seed: int) -> Path:
    """A student with the SRA student's config and tokenizer, every weight randomly initialised (seeded)."""
    if not (out / "config.json").exists():
        torch.manual_seed(seed)
        Student(StudentConfig.load(sra), read_tokenizer_files(sra)).save_pretrained(out)
    return out


def examples_per_second(kind: str, folder: Path, task: str, data_dir: Path, max_rows: int | None) -> float:
    """Inference throughput of a fine-tuned folder on the task's dev rows (batch 128, model loaded already)."""
    data = load_split(TASKS[task], "dev", data_dir, max_rows)
    if kind == "teacher":
        runner = load_finetuned_teacher(folder)[0]
        started = time.perf_counter()
        runner.predict(data, 128)
    else:
        model = load_task_model(folder)[0]
        started = time.perf_counter()
        model.predict(data, 128)
    return len(data) / (time.perf_counter() - started)


def summary(metrics: dict, wall: float, ex_per_s: float) -> dict:
    """The parts of a run's metrics.json the table needs."""
    history = metrics["history"]
    return {"final": metrics["final"], "selected_epoch": metrics.get("selected_epoch"),
            "zero_shot": history[0] if history and history[0]["epoch"] == 0 else None,
            "parameters": metrics["parameters"], "train_rows": metrics["train_rows"],
            "transfer_rows": metrics["transfer_rows"], "train_s": metrics["train_seconds"],
            "wall_s": round(wall, 1), "ex_per_s": round(ex_per_s, 1)}


def run_task(task: str, args: argparse.Namespace, results: Results) -> None:
    """The task's teacher, its logits, then every (seed, student row) not finished yet."""
    work, data_dir = results.folder / task, resolve_data_dir(TASKS[task], args.data_dir)
    base = dict(task=task, data_dir=args.data_dir, batch_size=args.batch_size, max_train_rows=args.max_train_rows,
                max_eval_rows=args.max_eval_rows, select=args.select, interpolate="off", force=True,
                quiet=True)
    shared = teacher_folder(args, task)
    teacher_dir, logits_dir = shared / "teacher", shared / "logits"
    if results.get(task, "teacher", 0) is None:
        record = kept_record(shared / "teacher.json")
        if record is None:
            log(f"[{task}] fine-tuning the task teacher ({args.teacher_epochs} epochs)")
            started = time.perf_counter()
            metrics = finetune_teacher(FinetuneConfig(model=args.teacher, out=str(teacher_dir),
                                                      epochs=args.teacher_epochs, lr=args.teacher_lr, seed=0, **base))
            wall = time.perf_counter() - started
            record = keep_record(shared / "teacher.json", {"task": task, "row": "teacher", "seed": 0, **summary(
                metrics, wall, examples_per_second("teacher", teacher_dir, task, data_dir, args.max_eval_rows))})
        results.add(record)
    if results.get(task, "logits", 0) is None:
        record = kept_record(shared / "logits.json")
        if record is None:
            log(f"[{task}] caching the teacher's logits (+{args.augment} variants per row)")
            started = time.perf_counter()
            manifest = cache_logits(LogitsConfig(model=str(teacher_dir), out=str(logits_dir), data_dir=args.data_dir,
                                                 max_rows=args.max_train_rows, augment=args.augment, force=True,
                                                 quiet=True))
            record = keep_record(shared / "logits.json", {
                "task": task, "row": "logits", "seed": 0, "rows": manifest.rows,
                "train_rows": manifest.extra["train_rows"], "wall_s": round(time.perf_counter() - started, 1)})
        results.add(record)
    similarity = TASKS[task].pair and TASKS[task].regression  # the cosine head: the encoder's rate is all there is
    lr, encoder_lr = (args.similarity_lr, None) if similarity else (args.lr, args.encoder_lr)
    for seed in args.seeds:
        for row in args.rows:
            if results.get(task, row, seed) is not None:
                continue
            model = args.sra_student if row.startswith("sra") else random_student(
                args.sra_student, results.folder / f"random-s{seed}", seed)
            out = work / f"{row}-s{seed}"
            log(f"[{task}] {ROWS[row]}, seed {seed}")
            started = time.perf_counter()
            metrics = finetune_student(FinetuneConfig(
                model=str(model), out=str(out), epochs=args.epochs, lr=lr, encoder_lr=encoder_lr, seed=seed,
                kd_alpha=args.kd_alpha,
                kd_cache=str(logits_dir) if row.endswith("_kd") else None, **base))
            wall = time.perf_counter() - started
            speed = examples_per_second("student", out, task, data_dir, args.max_eval_rows)
            results.add({"task": task, "row": row, "seed": seed, **summary(metrics, wall, speed)})
            shutil.rmtree(out)  # a student folder per run would fill the disk; the figures are kept
            write_report(args, results)


def kept_record(path: Path) -> dict | None:
    """A shared teacher's or logits' finished record (None until the step that writes it has finished)."""
    return json.loads(path.read_text()) if path.exists() else None


def keep_record(path: Path, record: dict) -> dict:
    """Write a shared step's record last (temporary name, then rename), so a torn step is redone; return it."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record) + "\n")
    return record


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(runs: list[dict], split: str, metric: str, zero_shot: bool = False) -> str:
    """'85.21 +- 0.40' over the seeds (x100), or '' when the split is absent."""
    values = [100 * (r["zero_shot"] if zero_shot else r["final"])[split][metric] for r in runs
              if split in (r["zero_shot"] if zero_shot else r["final"])]
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f}"


def task_table(task: str, results: Results) -> tuple[list[str], list[str]]:
    """The task's table lines and its claim lines."""
    spec = TASKS[task]
    main, metrics = spec.metrics[0], spec.metrics
    runs = {row: sorted((r for r in results.rows if r["task"] == task and r["row"] == row), key=lambda r: r["seed"])
            for row in ROWS}
    lines = []
    if task == "stsb" and runs["sra"] and runs["sra"][0]["zero_shot"]:
        zs = runs["sra"][:1]
        lines.append(f"| {task} | (3) SRA student, zero-shot cosine (no fine-tuning) | "
                     + " | ".join(cell(zs, "dev", m, True) for m in metrics) + " | "
                     + " | ".join(cell(zs, "test", m, True) for m in metrics) + f" | 1 | {zs[0]['parameters']:,} | | |")
    for row, name in ROWS.items():
        if not runs[row]:
            continue
        rs = runs[row]
        lines.append(f"| {task} | {name} | " + " | ".join(cell(rs, "dev", m) for m in metrics) + " | "
                     + " | ".join(cell(rs, "test", m) for m in metrics) + f" | {len(rs)} | {rs[0]['parameters']:,} | "
                     f"{statistics.fmean(r['ex_per_s'] for r in rs):,.0f} | "
                     f"{statistics.fmean(r['wall_s'] for r in rs) / 60:,.1f} |")
    claims = []

    def dev(row: str) -> tuple[float, float, int] | None:
        """(mean, std, seeds) of the row's dev main metric x100."""
        if not runs[row]:
            return None
        values = [100 * r["final"]["dev"][main] for r in runs[row]]
        return (*mean_std(values), len(values))

    for better, worse in (("sra", "random"), ("sra_kd", "random_kd")):
        a, b = dev(better), dev(worse)
        if a and b:
            spread = a[1] + b[1]
            verdict = ("holds" if a[0] - b[0] > spread else
                       "holds on the mean but within the seeds' spread" if a[0] > b[0] else "does NOT hold")
            claims.append(f"- {task}: {ROWS[better][:3]} > {ROWS[worse][:3]} (dev {main}): {verdict} "
                          f"({a[0]:.2f} vs {b[0]:.2f}; spread {spread:.2f}, {min(a[2], b[2])} seed(s))")
    four, five = dev("sra_kd"), dev("teacher")
    if four and five and task in ("sst2", "mrpc", "stsb"):
        speed = statistics.fmean(r["ex_per_s"] for r in runs["sra_kd"]) / runs["teacher"][0]["ex_per_s"]
        ok = five[0] > 0 and four[0] >= 0.95 * five[0] and speed >= 5  # (a ratio to a score <= 0 means nothing)
        claims.append(f"- {task}: (4) within 0.95x of (5) on dev {main} at >= 5x its speed: "
                      f"{'met' if ok else 'NOT met'} ({four[0] / five[0]:.3f}x, {speed:.1f}x the speed)")
    if task == "sst2" and four:
        claims.append(f"- sst2: dev accuracy of (4) >= 88: {'met' if four[0] >= 88 else 'NOT met'} ({four[0]:.2f})")
    if task == "stsb" and runs["sra"] and runs["sra"][0]["zero_shot"] and "test" in runs["sra"][0]["final"]:
        zero = 100 * runs["sra"][0]["zero_shot"]["test"]["spearman"]
        tuned = statistics.fmean(100 * r["final"]["test"]["spearman"] for r in runs["sra"])
        verdict = "met" if tuned >= zero + 3 else "NOT met"
        claims.append(f"- stsb: (3) fine-tuned test Spearman >= zero-shot + 3: {verdict} ({tuned:.2f} vs {zero:.2f} "
                      "zero-shot)")
    return lines, claims


def report(args: argparse.Namespace, results: Results) -> str:
    """The markdown section: settings, one table over tasks and rows, the paper's claims, published context."""
    lines = ["| task | model | dev (first metric) | dev (second) | test (first) | test (second) | seeds | params | "
             "dev examples/s | wall min per run |", "|---|---|---|---|---|---|---|---|---|---|"]
    claims, costs = [], []
    for task in [t for t in TASKS if any(r["task"] == t for r in results.rows)]:
        spec = TASKS[task]
        table, task_claims = task_table(task, results)
        pad = 2 - len(spec.metrics)  # single-metric tasks leave the second columns empty
        lines += [_pad_row(line, pad) for line in table]
        claims += task_claims
        logits = results.get(task, "logits", 0)
        if logits:
            costs.append(f"{task}: {logits['train_rows']:,} rows + {logits['rows'] - logits['train_rows']:,} "
                         f"variants, {logits['wall_s'] / 60:.1f} min")
    finished = sum(1 for r in results.rows if r["row"] in ROWS)
    planned = len(args.tasks) * (1 + len(args.rows) * len(args.seeds))
    rows = "every training row" if args.max_train_rows is None else f"the first {args.max_train_rows:,} training rows"
    metric_names = "MRPC F1 / acc, CoLA Matthews / acc, STS-B Pearson / Spearman, else accuracy"
    kept = ("best on training rows held out from training (every k-th, at most 2,000)" if args.select == "holdout"
            else "the last")
    return "\n".join([
        f"## GLUE: SRA student vs task-specific KD alone ({rows}; {time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}. {finished} of {planned} planned runs done"
        f"{' (the benchmark is resumable: rerun the same command to finish it)' if finished < planned else ''}.",
        f"SRA student: `{args.sra_student}`; rows (1)/(2) use its architecture with random initialisation. Task "
        f"teacher: all-MiniLM-L6-v2 + classification head, {args.teacher_epochs} epoch(s), lr {args.teacher_lr}, "
        f"seed 0. Students: {args.epochs} epoch(s), batch {args.batch_size}; features head [u, v, |u-v|, u*v] "
        f"or u -> 256 ReLU -> out at lr {args.lr}, encoder at {args.encoder_lr}; STS-B: cosine head (CoSENT), "
        f"encoder at {args.similarity_lr}; "
        f"KD alpha {args.kd_alpha} (MSE on logits) over the training rows plus {args.augment} Tang et al. variant(s) "
        f"per row (logits only); seeds {', '.join(map(str, args.seeds))} (mean ± sample std). Kept epoch: "
        f"{kept}; dev is never used for selection. Scores x100 ({metric_names}); test = labelled MRPC test and STS "
        "Benchmark test; a pair counts as one example; wall = fine-tuning plus evaluation per run.", "", *lines, "",
        "Cost of the teacher's logits (`tc cache-logits --augment`): " + ("; ".join(costs) or "none yet") + ".", "",
        "The paper's claims, checked ((3) > (1), (4) > (2) by more than the seeds' spread = the sum of the two "
        "standard deviations):", "", *(claims or ["- no task finished yet"]), "",
        "Published context (other teachers, splits and budgets: not a contest):", "",
        "| source | figure | model | score |", "|---|---|---|---|",
        *[f"| {src} | {fig} | {model} | {score} |" for src, fig, model, score in PUBLISHED]])


def _pad_row(line: str, pad: int) -> str:
    """Insert empty second-metric cells into a single-metric task's row (dev and test columns)."""
    if pad <= 0:
        return line
    cells = line.split(" | ")
    return " | ".join(cells[:3] + [""] + cells[3:4] + [""] + cells[4:])


def write_report(args: argparse.Namespace, results: Results) -> None:
    """Regenerate the section in RESULTS.md (full or capped runs; --quick only with --write)."""
    section = report(args, results)
    if args.quick and not args.write:
        return
    marker = f"glue:{args.section}" if args.section else (
        "glue:full" if args.max_train_rows is None else f"glue:first-{args.max_train_rows}")
    replace_section(marker, section)


def main(argv: list[str] | None = None) -> None:
    """Run every unfinished (task, row, seed), regenerating the table after each; print it at the end."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_of(args)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    results = Results(args.work / digest, settings)
    log(f"results: {results.path} ({sum(1 for r in results.rows if r['row'] in ROWS)} runs already done)")
    started = time.perf_counter()
    if not args.report_only:
        for task in args.tasks:
            run_task(task, args, results)
            write_report(args, results)
    section = report(args, results)
    write_report(args, results)
    print(section)
    log(f"done in {math.ceil((time.perf_counter() - started) / 60)} min")


if __name__ == "__main__":
    main()
