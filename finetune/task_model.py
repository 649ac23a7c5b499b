"""A student fine-tuned on a task: the student encoder plus a small head, saved as a student folder + head.

Pairs are classified from the usual features of the two sentence vectors, [u, v, |u - v|, u * v] (Tang et al.
2019, as in the paper's BiLSTM baselines); a pair scored by similarity (STS-B) takes the cosine of the two vectors
instead, so that fine-tuning makes the encoder a better sentence encoder rather than feeding a new MLP. The folder
stays a student folder: `Student.from_pretrained(ft/)` loads the fine-tuned encoder; task.json and
head.safetensors add the task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune.task_data import TaskData
from finetune.task_json import TASK_JSON, TaskJson, read_task_json
from finetune.tasks import TaskSpec
from student.student import Student
from teacher_cache.base.atomic import atomic_path, atomic_write
from teacher_cache.base.errors import UserError, first_line

HEAD_NAME = "head.safetensors"
FEATURES = "[u, v, |u-v|, u*v]"


class TaskHead(nn.Module):
    """Sentence vector(s) -> one logit per label, or one score.

    kind "features": [u, v, |u-v|, u*v] (u alone for single sentences) -> (ReLU hidden layer) -> outputs.
    kind "cosine": a pair's score is low + (high - low) * cos(u, v): no weights, so fine-tuning moves the encoder
    itself and the fine-tuned folder stays a sentence encoder whose cosine is the task's score.
    """

    def __init__(self, dim: int, pair: bool, n_out: int, hidden: int = 256, dropout: float = 0.1,
                 kind: str = "features", score_range: tuple[float, float] | list[float] | None = None):
        """A randomly initialised head for `dim`-wide vectors; hidden=0 means a linear head."""
        super().__init__()
        if kind == "cosine" and not (pair and n_out == 1):
            raise UserError("--head cosine: for sentence-pair tasks with a similarity score (such as stsb) only")
        low, high = score_range if score_range is not None else (0.0, 1.0)
        self.settings = {"dim": dim, "pair": pair, "n_out": n_out, "hidden": hidden, "dropout": dropout,
                         "kind": kind, "score_range": [float(low), float(high)]}
        self.low, self.span = float(low), float(high) - float(low)
        self.net: nn.Module | None = None
        if kind == "features":
            width = 4 * dim if pair else dim
            layers: list[nn.Module] = [nn.Dropout(dropout)]
            if hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
                width = hidden
            self.net = nn.Sequential(*layers, nn.Linear(width, n_out))

    @property
    def kind(self) -> str:
        """'features' or 'cosine'."""
        return self.settings["kind"]

    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, dim) vectors (and the second sentences' for pairs) -> (batch, n_out)."""
        if self.net is None:
            cosine = torch.nn.functional.cosine_similarity(u.float(), v.float(), dim=-1)
            return (self.low + self.span * cosine).unsqueeze(1)
        x = u if v is None else torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        return self.net(x)


def head_kind(requested: str, spec: TaskSpec) -> str:
    """The head a run uses: `requested`, with auto meaning cosine for a pair task scored by similarity."""
    if requested != "auto":
        return requested
    return "cosine" if spec.pair and spec.regression else "features"


def batches_by_length(data: TaskData, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (longest first), for fast inference."""
    lengths = np.array([len(t) + (len(data.pairs[i]) if data.pairs else 0) for i, t in enumerate(data.texts)])
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class StudentClassifier(nn.Module):
    """Student encoder + task head; `forward_texts` trains end to end, `predict` returns outputs in input order."""

    def __init__(self, student: Student, head: TaskHead):
        """Join an encoder and a head."""
        super().__init__()
        self.student, self.head = student, head

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.parameters()).device

    def vectors(self, texts: list[str]) -> torch.Tensor:
        """Sentence vectors of texts (with gradients when training)."""
        ids, lengths = self.student.tokenizer(texts)
        return self.student(ids.to(self.device), lengths.to(self.device))

    def forward_texts(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """Outputs for a batch; both sentences of a pair go through one encoder call."""
        if pairs is None:
            return self.head(self.vectors(texts))
        vecs = self.vectors(list(texts) + list(pairs))
        return self.head(vecs[:len(texts)], vecs[len(texts):])

    def predict(self, data: TaskData, batch_size: int = 128) -> np.ndarray:
        """(n, n_out) outputs (logits or score) for every example, in input order."""
        out = np.zeros((len(data), self.head.settings["n_out"]), dtype=np.float32)
        was = self.training
        self.eval()
        with torch.inference_mode():
            for idx in batches_by_length(data, batch_size):
                pairs = [data.pairs[i] for i in idx] if data.pairs else None
                out[idx] = self.forward_texts([data.texts[i] for i in idx], pairs).float().cpu().numpy()
        self.train(was)
        return out

    def features(self, data: TaskData, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen-encoder sentence vectors of the first (and second) texts, computed once."""
        u = self.student.encode(data.texts, batch_size=batch_size, convert_to_tensor=True)
        v = self.student.encode(data.pairs, batch_size=batch_size, convert_to_tensor=True) if data.pairs else None
        return u.to(self.device), None if v is None else v.to(self.device)

    def num_parameters(self) -> int:
        """Number of weights, encoder and head."""
        return sum(p.numel() for p in self.parameters())


def write_task_json(folder: str | Path, kind: str, spec: TaskSpec, **extra: object) -> None:
    """task.json: what model kind the folder holds and the task it was fine-tuned on."""
    data = {"kind": kind, "task": spec.to_dict(), **extra}
    atomic_write(Path(folder) / TASK_JSON, json.dumps(data, indent=2) + "\n")


def save_task_model(folder: str | Path, model: StudentClassifier, spec: TaskSpec, args: dict) -> None:
    """The student folder (config, weights, tokenizer) plus head.safetensors and task.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    model.student.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    with atomic_path(folder / HEAD_NAME) as tmp:  # a link planted at the name is replaced, never written through
        save_file(state, str(tmp))
    features = FEATURES if model.head.kind == "features" else "cosine(u, v), rescaled to the task's score range"
    write_task_json(folder, "student", spec, head=model.head.settings, features=features, args=args)


def load_task_model(folder: str | Path, device: str = "cpu", task: TaskJson | None = None,
                    ) -> tuple[StudentClassifier, TaskSpec]:
    """A fine-tuned student folder -> (model in eval mode, its task); `task`: its task.json, when read already."""
    from safetensors.torch import load_file

    folder = Path(folder)
    task = task or read_task_json(folder)
    if task.kind != "student":
        raise UserError(f"--model {folder}: holds a fine-tuned {task.kind}, not a student")
    head = TaskHead(**task.meta["head"])
    try:
        head.load_state_dict(load_file(str(folder / HEAD_NAME)))
    except Exception as exc:  # missing, truncated (safetensors' own error type) or of another shape
        raise UserError(f"{folder / HEAD_NAME}: missing or does not match task.json ({first_line(exc, 160)})") from None
    model = StudentClassifier(Student.from_pretrained(folder), head)
    return model.to(device).eval(), task.spec
