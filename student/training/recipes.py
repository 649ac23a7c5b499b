"""Named, measured training recipes: `tc train-student --recipe NAME` starts from one, every knob overridable.

The figures behind each choice are in benchmarks/RESULTS.md ("Student recipes"); settings were chosen on STS-B
dev/train and the validation split, never on STS-B test.
"""

from __future__ import annotations

from teacher_cache.base.errors import UserError

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
    # the paper's student, a BiLSTM (max-pooled over time), narrowed to hidden 128 and started as the compact CNN
    # is: its output added to a static path, the LSTM side at zero, so it can only add word order (#24 sweep: level
    # with static/compact on STS-B dev, ahead on agreement with the teacher, and more epochs keep paying)
    "paper": {"arch": "bilstm", "emb_dim": 384, "hidden": 128, "static_path": True, "init_embeddings": "outputs",
              "token_weights": True, "loss": "cosine", "lr": 1e-3, "emb_lr": 1e-2, "epochs": 3, "batch_size": 128},
    # the paper's BiLSTM exactly (Tang et al. sizes, MSE, the teacher's input embeddings): the earlier `paper`
    "paper-512": {"arch": "bilstm", "emb_dim": 300, "hidden": 512, "init_embeddings": "teacher", "loss": "mse",
                  "lr": 1e-3, "epochs": 3, "batch_size": 128},
}
DEFAULT_RECIPE = "static"
# Every knob some recipe sets: TrainConfig leaves these None ("the recipe's") so that a value the caller gives,
# even one equal to a default, is told apart from one the recipe should fill.
RECIPE_KNOBS = tuple(dict.fromkeys(k for recipe in RECIPES.values() for k in recipe))
# A recipe knob's value when neither the recipe nor the caller sets it (recipe None, or a knob of the recipe's own
# architecture dropped for another one); None: derived from the architecture or the run.
BARE = {"arch": "bilstm", "emb_dim": None, "hidden": None, "kernel_sizes": None, "init_embeddings": "teacher",
        "token_weights": False, "static_path": False, "loss": "mse", "lr": 1e-3, "emb_lr": None, "epochs": 3,
        "batch_size": 128}
# The knobs that size or start one architecture: another --arch drops the recipe's values of these.
ARCH_KNOBS = ("emb_dim", "hidden", "init_embeddings", "token_weights", "static_path", "kernel_sizes")


def apply_recipe(name: str | None, given: dict) -> dict:
    """Every recipe knob's value: the given one (not None), else recipe `name`'s (None: no recipe), else BARE's."""
    if name is not None and name not in RECIPES:
        raise UserError(f"--recipe {name}: unknown recipe; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES.get(name, {})
    arch = given.get("arch") or recipe.get("arch") or BARE["arch"]
    if arch != recipe.get("arch", arch):  # another architecture: its own defaults, not the recipe's sizes
        recipe = {k: v for k, v in recipe.items() if k not in ARCH_KNOBS}
    return {k: given[k] if given.get(k) is not None else recipe.get(k, BARE[k]) for k in RECIPE_KNOBS}

