"""GLUE comparison (the paper's table): does SRA pre-training beat task-specific distillation alone?

Usage: .venv/bin/python -m benchmarks.glue --sra-student benchmarks/work/students/bilstm-teacher
           [--tasks sst2,mrpc,rte,cola,stsb] [--max-train-rows N] [--epochs 3] [--augment N] [--seed 0] [--quick]

Rows per task, all with the same seed, data order and head:
(1) BiLSTM, random init (the SRA student's config), fine-tuned;  (2) the same + task KD (~ BiLSTM_SOFT);
(3) the SRA student (from tc train-student) fine-tuned;            (4) the same + task KD;
(5) the task teacher: all-MiniLM-L6-v2 + a classification head, fine-tuned (its logits are the KD targets).
Scores x100 on dev (and on the labelled MRPC and STS-B test sets), parameters, inference examples/s on dev, and
training wall time. --quick (200 training rows, 200 eval rows, 1 epoch) prints the table without writing
RESULTS.md unless --write; a full run appends to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, append_results, machine
from finetune.config import FinetuneConfig, LogitsConfig
from finetune.students import finetune_student
from finetune.task_data import load_split
from finetune.task_model import load_task_model
from finetune.tasks import TASKS, resolve_data_dir
from finetune.teachers import cache_logits, finetune_teacher, load_finetuned_teacher
from student import Student, StudentConfig
from student.tokenizer import read_tokenizer_files

ROWS = {"random": "(1) BiLSTM random init", "random_kd": "(2) BiLSTM random init + task KD",
        "sra": "(3) SRA student", "sra_kd": "(4) SRA student + task KD", "teacher": "(5) teacher (MiniLM-L6 FT)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; --quick fills the small settings it implies."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sra-student", required=True, type=Path, help="student folder from tc train-student")
    p.add_argument("--tasks", default="sst2,mrpc,rte,cola,stsb")
    p.add_argument("--max-train-rows", type=int, default=None, help="cap every task's training rows")
    p.add_argument("--max-eval-rows", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="student learning rate")
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--augment", type=int, default=0, help="Tang et al. variants per training row in the KD rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", default=None, help="default: the bundled all-MiniLM-L6-v2")
    p.add_argument("--data-dir", default=None, help="GLUE folder (default ../shared/data/glue)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "glue")
    p.add_argument("--reuse-teacher", action="store_true", help="keep a task teacher and logits already in --work")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="200 train / 200 eval rows, 1 epoch, no RESULTS.md")
    p.add_argument("--write", action="store_true", help="append to RESULTS.md even with --quick")
    args = p.parse_args(argv)
    if args.quick:
        args.max_train_rows = args.max_train_rows or 200
        args.max_eval_rows = args.max_eval_rows or 200
        args.epochs = 1
    args.teacher_epochs = args.teacher_epochs or args.epochs
    return args


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def random_bilstm(sra: Path, out: Path, seed: int) -> Path:
    """A student with the SRA student's config and tokenizer, every weight randomly initialised."""
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


def run_task(task: str, args: argparse.Namespace, random_dir: Path) -> dict[str, dict]:
    """The five rows of one task: {row key: metrics (+ wall seconds, examples/s)}."""
    work = args.work / task
    base = dict(task=task, data_dir=args.data_dir, batch_size=args.batch_size, max_train_rows=args.max_train_rows,
                max_eval_rows=args.max_eval_rows, seed=args.seed, force=True, quiet=True)
    data_dir = resolve_data_dir(TASKS[task], args.data_dir)
    results: dict[str, dict] = {}
    teacher_dir, logits_dir = work / "teacher", work / "logits"
    started = time.perf_counter()
    if not (args.reuse_teacher and (teacher_dir / "task.json").exists()):
        log(f"[{task}] fine-tuning the teacher")
        finetune_teacher(FinetuneConfig(model=args.teacher, out=str(teacher_dir), epochs=args.teacher_epochs,
                                        lr=args.teacher_lr, **base))
    teacher_s = time.perf_counter() - started
    log(f"[{task}] caching teacher logits")
    cache_logits(LogitsConfig(model=str(teacher_dir), out=str(logits_dir), data_dir=args.data_dir,
                              max_rows=args.max_train_rows, force=True, quiet=True, augment=args.augment,
                              augment_seed=args.seed))
    results["teacher"] = json.loads((teacher_dir / "metrics.json").read_text()) | {"wall_s": teacher_s}
    for key, model, kd in (("random", random_dir, None), ("random_kd", random_dir, logits_dir),
                           ("sra", args.sra_student, None), ("sra_kd", args.sra_student, logits_dir)):
        log(f"[{task}] {ROWS[key]}")
        started = time.perf_counter()
        metrics = finetune_student(FinetuneConfig(model=str(model), out=str(work / key), epochs=args.epochs,
                                                  lr=args.lr, kd_cache=str(kd) if kd else None,
                                                  kd_alpha=args.kd_alpha, **base))
        results[key] = metrics | {"wall_s": time.perf_counter() - started}
    for key in ROWS:
        folder = teacher_dir if key == "teacher" else work / key
        results[key]["ex_per_s"] = examples_per_second("teacher" if key == "teacher" else "student", folder, task,
                                                       data_dir, args.max_eval_rows)
    return results


def fmt_scores(scores: dict[str, float]) -> str:
    """'85.21 / 79.90' (x100) in the task's metric order."""
    return " / ".join(f"{100 * v:.2f}" for v in scores.values())


def report(all_results: dict[str, dict[str, dict]], args: argparse.Namespace, seconds: float) -> str:
    """The markdown section: one table over tasks and rows, then whether the paper's claims hold."""
    lines = ["| task | model | dev | test | params | dev examples/s | train+eval wall s |",
             "|---|---|---|---|---|---|---|"]
    claims = []
    for task, res in all_results.items():
        spec = TASKS[task]
        for key, name in ROWS.items():
            final = res[key]["final"]
            lines.append(f"| {task} ({'/'.join(spec.metrics)}) | {name} | {fmt_scores(final['dev'])} | "
                         f"{fmt_scores(final['test']) if 'test' in final else ''} | {res[key]['parameters']:,} | "
                         f"{res[key]['ex_per_s']:,.0f} | {res[key]['wall_s']:,.0f} |")
        main = spec.metrics[0]
        for better, worse in (("sra", "random"), ("sra_kd", "random_kd")):
            a, b = res[better]["final"]["dev"][main], res[worse]["final"]["dev"][main]
            verdict = "holds" if a > b else ("does NOT hold (a tie)" if a == b else "does NOT hold")
            claims.append(f"- {task}: {ROWS[better][:3]} > {ROWS[worse][:3]} on dev {main}: {verdict} "
                          f"({100 * a:.2f} vs {100 * b:.2f})")
    rows = "all" if args.max_train_rows is None else f"the first {args.max_train_rows:,}"
    return "\n".join([
        f"## GLUE: SRA student vs task-specific KD alone ({time.strftime('%Y-%m-%d')}"
        f"{', --quick' if args.quick else ''})",
        "", f"Machine: {machine()}; torch threads {torch.get_num_threads()}. SRA student: `{args.sra_student}`; "
        f"teacher: all-MiniLM-L6-v2 + classification head, {args.teacher_epochs} epoch(s), lr {args.teacher_lr}. "
        f"Students: {args.epochs} epoch(s), lr {args.lr}, batch {args.batch_size}, head [u, v, |u-v|, u*v] -> 256 "
        f"ReLU -> out, KD alpha {args.kd_alpha} (MSE on logits), "
        f"{f'{args.augment} Tang et al. variants per row in the KD rows' if args.augment else 'no augmentation'}, "
        f"seed {args.seed}; {rows} training rows per task"
        f"{'' if args.max_eval_rows is None else f', first {args.max_eval_rows:,} eval rows'}. Scores x100 "
        "(MRPC F1/acc, CoLA Matthews/acc, STS-B Pearson/Spearman, else accuracy); test = labelled MRPC test "
        "(msr_paraphrase_test.txt) and STS Benchmark test; a pair counts as one example. Last epoch reported (no "
        "selection on dev). "
        f"Whole benchmark wall: {seconds / 60:.1f} min.", "", *lines, "", "Paper's claims ((3) > (1), (4) > (2)):",
        "", *claims])


def main(argv: list[str] | None = None) -> None:
    """Run every task, print the section, append it to RESULTS.md (full runs, or --write)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.teacher is None:
        from teacher_cache.teacher import default_teacher_path

        args.teacher = default_teacher_path()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    random_dir = random_bilstm(args.sra_student, args.work / "random_bilstm", args.seed)
    results = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in TASKS:
            raise SystemExit(f"--tasks {task}: choose from {', '.join(TASKS)}")
        results[task] = run_task(task, args, random_dir)
    section = report(results, args, time.perf_counter() - started)
    print(section)
    if not args.quick or args.write:
        append_results(section)


if __name__ == "__main__":
    main()
