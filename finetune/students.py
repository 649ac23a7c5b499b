"""Fine-tuning a student on a task: its encoder plus a head (finetune/task_model.py), optionally with task KD."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from finetune.config import FinetuneConfig
from finetune.fit import Tuned, check_out, clear_out, fit, holding_out
from finetune.prepare import prepare
from finetune.task_data import TaskData
from finetune.task_model import StudentClassifier, TaskHead, head_kind, save_task_model
from student.student import Student, load_student_folder
from teacher_cache.base.errors import UserError


@holding_out
def finetune_student(cfg: FinetuneConfig, student: Student | None = None) -> dict:
    """Fine-tune a student folder (or a given Student) on cfg.task; write the model and metrics.json to cfg.out."""
    cfg.validate()
    cfg.lr = cfg.lr or 1e-3
    prep = prepare(cfg)
    student = student if student is not None else load_student_folder(cfg.model)
    spec = prep.spec
    kind = head_kind(cfg.head, spec)
    if kind == "cosine" and cfg.freeze_encoder:
        raise UserError("--freeze-encoder: the cosine head has no weights, so nothing would train (use --head "
                        "features, or let the encoder train)")
    if cfg.interpolate == "on" and (cfg.select == "last" or cfg.freeze_encoder):
        raise UserError("--interpolate on: needs --select dev or holdout (to choose the blend on) and an encoder "
                        "that trains (no --freeze-encoder)")
    torch.manual_seed(cfg.seed)
    head = TaskHead(student.dim, spec.pair, spec.n_outputs, cfg.head_hidden, cfg.dropout, kind, spec.score_range)
    check_out(cfg.out, cfg.model, cfg.force)
    clear_out(cfg.out)
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
                                   lr_groups=groups, blend=list(student.parameters()) if blend else None))
    args = {k: v for k, v in asdict(cfg).items() if k not in ("force", "quiet", "online")}
    save_task_model(cfg.out, model, spec, args)
    return metrics
