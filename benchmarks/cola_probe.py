"""CoLA diagnosis (#24): how much acceptability a frozen sentence vector holds, teacher vs SRA student vs random init.

Usage: .venv/bin/python -m benchmarks.cola_probe --sra-student benchmarks/work/curve/paper-400000-... \
           [--data-dir ../shared/data/glue] [--section NAME]

Each encoder is frozen; a logistic regression on its L2-normalised, standardised sentence vectors is trained on
CoLA's training rows (weight decay chosen on every 10th training row, held out; never on dev) and scored on dev
(Matthews correlation x100, accuracy). If the teacher's own pooled vector gives near-chance MCC, an SRA student
that approximates that vector cannot start CoLA ahead of random init: the signal is not in the target. Rows: the
teacher (mean pooling, the cache's target), the SRA student, the same architecture randomly initialised, and a
bag-of-word-pieces control (token counts over the teacher's vocabulary). The section replaces glue-probe:NAME in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, machine, replace_section
from benchmarks.glue import GLUE_DIR
from finetune.metrics import compute_metrics
from finetune.task_data import load_split
from finetune.tasks import TASKS

DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def mcc(y: np.ndarray, p: np.ndarray) -> float:
    """Matthews correlation of 0/1 labels and predictions (the task's own metric code)."""
    return compute_metrics(TASKS["cola"], np.eye(2)[p], y)["matthews"]


def fit_logistic(x: np.ndarray, y: np.ndarray, decay: float, steps: int = 300) -> torch.nn.Linear:
    """A logistic regression fitted with full-batch L-BFGS and L2 `decay` on the weights."""
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    model = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt).squeeze(1), yt)
        loss = loss + decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def predict(model: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    """0/1 predictions of a fitted logistic regression."""
    with torch.no_grad():
        return (model(torch.from_numpy(x)).squeeze(1) > 0).numpy().astype(int)


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> dict:
    """Standardise, choose the decay on held-out training rows by MCC, refit on all training rows, score dev."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, dev_x = ((train_x - mean) / std).astype(np.float32), ((dev_x - mean) / std).astype(np.float32)
    held = np.arange(len(train_y)) % 10 == 0
    scores = {d: mcc(train_y[held], predict(fit_logistic(train_x[~held], train_y[~held], d), train_x[held]))
              for d in DECAYS}
    decay = max(scores, key=scores.get)
    pred = predict(fit_logistic(train_x, train_y, decay), dev_x)
    return {"dev_mcc": 100 * mcc(dev_y, pred), "dev_acc": 100 * float((pred == dev_y).mean()), "decay": decay,
            "held_mcc": 100 * scores[decay]}


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as the cosine the students are trained on sees them)."""
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def main() -> None:
    """Encode CoLA train/dev with each frozen encoder, probe each, write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sra-student", required=True, type=Path, help="student folder from tc train-student")
    parser.add_argument("--data-dir", type=Path, default=GLUE_DIR, help="GLUE folder (default ../shared/data/glue)")
    parser.add_argument("--section", default="cola", help="RESULTS.md section glue-probe:NAME")
    args = parser.parse_args()
    from benchmarks.glue import random_student
    from student import Student
    from teacher_cache.encode.batching import teacher_encoder

    train, dev = (load_split(TASKS["cola"], split, args.data_dir) for split in ("train", "dev"))
    train_texts, train_y, dev_texts, dev_y = train.texts, train.labels, dev.texts, dev.labels
    sra = Student.from_pretrained(args.sra_student)
    random_dir = ROOT / "benchmarks" / "work" / "cola-probe" / f"random-{args.sra_student.name}"
    random_init = Student.from_pretrained(random_student(args.sra_student, random_dir, seed=0))
    vocab = sra.config.vocab_size

    def bag(texts: list[str]) -> np.ndarray:
        counts = np.zeros((len(texts), vocab), np.float32)
        for i, ids in enumerate(sra.tokenizer.ids(texts)):
            np.add.at(counts[i], [t for t in ids if t < vocab], 1.0)
        return counts

    encoders = {"teacher all-MiniLM-L6-v2 (its pooled vector: the SRA target)": teacher_encoder(None),
                f"SRA student ({sra.config.arch})": lambda s: sra.encode(s, batch_size=256),
                f"same architecture, random init ({sra.config.arch})": lambda s: random_init.encode(s, batch_size=256)}
    rows = []
    for name, encode in encoders.items():
        start = time.perf_counter()
        row = {"model": name, **probe(normalise(np.asarray(encode(train_texts), np.float32)), train_y,
                                      normalise(np.asarray(encode(dev_texts), np.float32)), dev_y)}
        rows.append(row | {"seconds": time.perf_counter() - start})
        print(row, flush=True)
    rows.append({"model": "bag of word-pieces (counts; no encoder)",
                 **probe(bag(train_texts), train_y, bag(dev_texts), dev_y)})
    print(rows[-1], flush=True)
    majority = 100 * float((dev_y == np.bincount(train_y).argmax()).mean())
    lines = [f"## CoLA: what a frozen sentence vector holds (#24, {time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}. `python -m benchmarks.cola_probe --sra-student {args.sra_student}`: each "
             "encoder frozen, a logistic regression on its unit-length, standardised sentence vectors, trained on "
             f"CoLA's {len(train_y):,} training rows (L2 decay from {', '.join(map(str, DECAYS))} chosen by MCC on "
             f"every 10th training row held out), scored on the {len(dev_y):,} dev rows (dev never chooses). "
             f"Always predicting the majority class: accuracy {majority:.1f}, MCC 0.", "",
             "| encoder (frozen) | dev MCC x100 | dev accuracy | held-out train MCC | decay |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dev_mcc']:.2f} | {r['dev_acc']:.1f} | {r['held_mcc']:.2f} | {r['decay']:g} |"
              for r in rows]
    replace_section(f"glue-probe:{args.section}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
