"""Fine-tuning a student on a task: its encoder plus a head (finetune/task_model.py), optionally with task KD."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from finetune.config import FinetuneConfig
from finetune.fit import Tuned, check_out, fit, holding_out
from finetune.prepare import prepare
from finetune.task_data import TaskData
from finetune.task_model import StudentClassifier, TaskHead, head_kind, save_task_model
from finetune.tasks import TaskSpec
from student.student import Student, load_student_folder
from teacher_cache.base.errors import UserError

# The cosine head's default rate, one for every architecture (its only weights are the encoder's), measured on STS-B:
# the compact (cnn) student of benchmarks/RESULTS.md "glue:full" / "sts-finetune" (3 and 6 epochs), and a static
# student of a 3,000-row cache (issue 24; 3 epochs, held-out selection, seeds 0-1: STS-B test 72.6 at 5e-4 and 1e-3,
# 71.6 at 1e-4, 71.2 = zero-shot kept at 2.5e-4; dev 81.5 at 5e-4, 80.3 at 1e-3): no reason for a rate per arch.
COSINE_LR = 5e-4


def similarity_metric(spec: TaskSpec) -> str:
    """What picks the kept epoch of a cosine head: Spearman of the cosine, as a sentence encoder is scored (tc eval)."""
    return "spearman" if "spearman" in spec.metrics else spec.metrics[0]


@holding_out
def finetune_student(cfg: FinetuneConfig, student: Student | None = None) -> dict:
    """Fine-tune a student folder (or a given Student) on cfg.task; write the model and metrics.json to cfg.out."""
    cfg.validate()
    prep = prepare(cfg, lambda spec: "holdout" if head_kind(cfg.head, spec) == "cosine" else "last")
    student = student if student is not None else load_student_folder(cfg.model)
    spec = prep.spec
    kind = head_kind(cfg.head, spec)
    cfg.lr = cfg.lr or (COSINE_LR if kind == "cosine" else 1e-3)
    if kind == "cosine" and cfg.freeze_encoder:
        raise UserError("--freeze-encoder: the cosine head has no weights, so nothing would train (use --head "
                        "features, or let the encoder train)")
    if cfg.interpolate == "on" and (cfg.select == "last" or cfg.freeze_encoder):
        raise UserError("--interpolate on: needs --select dev or holdout (to choose the blend on) and an encoder "
                        "that trains (no --freeze-encoder)")
    torch.manual_seed(cfg.seed)
    head = TaskHead(student.dim, spec.pair, spec.n_outputs, cfg.head_hidden, cfg.dropout, kind, spec.score_range)
    check_out(cfg.out, cfg.model, cfg.force)
    model = StudentClassifier(student, head).to(cfg.device)
    train = prep.train
    if cfg.freeze_encoder:  # the encoder never changes: encode every split once, train the head on the vectors
        student.requires_grad_(False)
        cached = {id(d): model.features(d) for d in [train, *prep.evals.values()]}
        u, v = cached[id(train)]

        def forward(idx: np.ndarray) -> torch.Tensor:
            """Head outputs of training rows from their cached vectors."""
            return head(u[idx], None if v is None else v[idx])

        def predict(data: TaskData) -> np.ndarray:
            """Head outputs of a split from its cached vectors."""
            head.eval()
            with torch.inference_mode():
                a, b = cached[id(data)]
                return head(a, b).float().cpu().numpy()
    else:
        def forward(idx: np.ndarray) -> torch.Tensor:
            """Outputs of training rows, through encoder and head."""
            return model.forward_texts([train.texts[i] for i in idx],
                                       [train.pairs[i] for i in idx] if train.pairs else None)

        predict = model.predict
    info = {"kind": "student", "model": str(cfg.model), "parameters": model.num_parameters(),
            "freeze_encoder": cfg.freeze_encoder, "head": kind}
    groups = [(list(student.parameters()), cfg.encoder_lr or cfg.lr), (list(head.parameters()), cfg.lr)]
    blend = cfg.interpolate == "on" or (cfg.interpolate == "auto" and kind == "cosine")
    metrics = fit(cfg, prep, Tuned(model, forward, predict, info, cosine_head=kind == "cosine", span=head.span,
                                   lr_groups=groups, blend=list(student.parameters()) if blend else None,
                                   select_metric=similarity_metric(spec) if kind == "cosine" else None))
    args = {k: v for k, v in asdict(cfg).items() if k not in ("force", "quiet", "online")}
    save_task_model(cfg.out, model, spec, args)
    return metrics
