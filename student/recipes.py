"""Named, measured training recipes: `tc train-student --recipe NAME` starts from one, every knob overridable.

The figures behind each choice are in benchmarks/RESULTS.md ("Student recipes"); settings were chosen on STS-B
dev/train and the validation split, never on STS-B test.
"""

from __future__ import annotations

from dataclasses import fields

from student.train_config import TrainConfig
from teacher_cache.errors import UserError

RECIPES: dict[str, dict] = {
    # mean of SIF-weighted token vectors started from the teacher's per-token outputs: model2vec's starting point,
    # then distilled on the cache (tokenlearn-like); ~35x the teacher's encode speed on a CPU
    "static": {"arch": "static", "emb_dim": 384, "init_embeddings": "outputs", "token_weights": True,
               "loss": "cosine", "lr": 1e-3, "emb_lr": 1e-2, "epochs": 3, "batch_size": 128},
    # the static student plus one width-3 convolution added to it (started at zero): context for a few times the
    # static student's cost, still many times faster than a 6-layer teacher
    "compact": {"arch": "cnn", "emb_dim": 384, "hidden": 256, "kernel_sizes": [3], "static_path": True,
                "init_embeddings": "outputs", "token_weights": True, "loss": "cosine", "lr": 1e-3, "emb_lr": 1e-2,
                "epochs": 3, "batch_size": 128},
    # the paper's BiLSTM (Tang et al. sizes) and loss, worth its cost against a base-size teacher
    "paper": {"arch": "bilstm", "emb_dim": 300, "hidden": 512, "init_embeddings": "teacher", "loss": "mse",
              "lr": 1e-3, "epochs": 3, "batch_size": 128},
}
DEFAULT_RECIPE = "static"


def recipe_config(name: str | None, **overrides) -> TrainConfig:
    """TrainConfig of recipe `name` (default DEFAULT_RECIPE) with the given knobs (None values ignored) on top."""
    name = name or DEFAULT_RECIPE
    if name not in RECIPES:
        raise UserError(f"--recipe {name}: unknown recipe; choose one of {', '.join(RECIPES)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    chosen = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    if chosen.get("arch") != RECIPES[name]["arch"]:  # another architecture: its own defaults, not the recipe's sizes
        recipe_only = ("emb_dim", "hidden", "init_embeddings", "token_weights", "static_path", "kernel_sizes")
        chosen = {k: v for k, v in chosen.items() if overrides.get(k) is not None or k not in recipe_only}
    return TrainConfig(**chosen, recipe=name)
