"""A task's metrics (accuracy, F1, Matthews, Pearson/Spearman) and its predictions written as its labels."""

from __future__ import annotations

import numpy as np

from finetune.tasks import TaskSpec


def compute_metrics(spec: TaskSpec, outputs: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """The task's metrics of model outputs (logits or scores) against gold label indices or scores."""
    if spec.regression:
        from scipy.stats import pearsonr, spearmanr

        pred = outputs.reshape(len(outputs), -1)[:, 0]
        if np.std(pred) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(pred, gold).statistic), "spearman": float(spearmanr(pred, gold).statistic)}
    pred = outputs.argmax(axis=1)
    out = {"accuracy": float((pred == gold).mean())}
    if len(spec.labels) == 2:
        pos = spec.labels.index(spec.positive) if spec.positive else 1
        tp = float(((pred == pos) & (gold == pos)).sum())
        fp = float(((pred == pos) & (gold != pos)).sum())
        fn = float(((pred != pos) & (gold == pos)).sum())
        tn = float(len(gold)) - tp - fp - fn
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews"] = float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0
    return {k: round(out[k], 6) for k in spec.metrics}


def decode(spec: TaskSpec, outputs: np.ndarray) -> list[str]:
    """Predictions as the task writes its labels: the label string, or the score with 4 decimals."""
    if spec.regression:
        return [f"{v:.4f}" for v in outputs.reshape(len(outputs), -1)[:, 0]]
    return [spec.labels[i] for i in outputs.argmax(axis=1)]
