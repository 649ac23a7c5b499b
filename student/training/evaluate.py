"""How close a student is to its teacher on held-out rows: MSE, cosine, and kNN@10 neighbourhood agreement."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_indices(vectors: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Exact top-k cosine neighbours of every row among the others (self excluded), (n, k)."""
    unit = F.normalize(vectors.float(), dim=-1)
    out = []
    for start in range(0, len(unit), chunk):
        sims = unit[start:start + chunk] @ unit.T
        rows = torch.arange(start, min(start + chunk, len(unit)))
        sims[rows - start, rows] = -float("inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def knn_agreement(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor, k: int = 10) -> float:
    """Mean share of each row's k nearest teacher neighbours that are also its k nearest student neighbours."""
    k = min(k, len(teacher_vectors) - 1)
    if k < 1:
        return float("nan")
    ours, theirs = knn_indices(student_vectors, k), knn_indices(teacher_vectors, k)
    hits = (ours[:, :, None] == theirs[:, None, :]).any(dim=2).sum(dim=1)
    return float(hits.float().mean() / k)


def compare(student_vectors: np.ndarray | torch.Tensor, teacher_vectors: np.ndarray | torch.Tensor,
            k: int = 10) -> dict[str, float]:
    """val_mse (per element), val_cosine (mean) and knn@k agreement between two (n, dim) arrays."""
    s = torch.as_tensor(np.asarray(student_vectors, dtype=np.float32))
    t = torch.as_tensor(np.asarray(teacher_vectors, dtype=np.float32))
    if len(s) == 0:
        return {}
    return {"val_mse": float(F.mse_loss(s, t)),
            "val_cosine": float(F.cosine_similarity(s, t, dim=-1).mean()),
            f"knn@{k}": knn_agreement(s, t, k)}


def evaluate(student, texts: list[str], targets: np.ndarray, batch_size: int = 256, k: int = 10) -> dict[str, float]:
    """Encode the validation texts with `student` and compare them with the teacher's vectors."""
    if not texts:
        return {}
    return compare(student.encode(texts, batch_size=batch_size), targets, k)
