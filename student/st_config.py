"""The sentence-transformers files of a student folder: modules.json and config_sentence_transformers.json.

A static student (mean pooling, no special tokens) is written as sentence-transformers' own StaticEmbedding
module, its folded matrix (row t = proj(w_t e_t)) in the subfolder STATIC_MODULE_DIR, so the folder loads as
plain `SentenceTransformer("student_out/")`, no flag. [UNK]'s row is zero there: sentence-transformers keeps
[UNK] in the mean where the student drops it, which then only scales the vector (same cosines). Other students
name this package's module class, student.st_module.StudentSentenceEncoder, which sentence-transformers >= 6
imports only with `trust_remote_code=True` (nothing is downloaded). Nothing here imports sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.safe_paths import real_folder

MODULE_CLASS = "student.st_module.StudentSentenceEncoder"
MODULES = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS}]
STATIC_MODULE_DIR = "0_StaticEmbedding"
STATIC_MODULE_CLASS = "sentence_transformers.models.StaticEmbedding"
STATIC_MODULES = [{"idx": 0, "name": "0", "path": STATIC_MODULE_DIR, "type": STATIC_MODULE_CLASS}]
ST_CONFIG = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
             "similarity_fn_name": "cosine"}


def write_sentence_transformers_files(folder: str | Path, static: tuple[np.ndarray, bytes] | None = None) -> None:
    """Write modules.json (and config_sentence_transformers.json unless present) into a student folder, atomically.

    `static` is (folded matrix, tokenizer.json bytes) for a static student, written as a StaticEmbedding module.
    An existing config_sentence_transformers.json is kept: SentenceTransformer.save writes its own before it
    saves the modules, with the prompts and similarity function the user set.
    """
    folder = Path(folder)
    if static is not None:
        from safetensors.numpy import save

        matrix, tokenizer_json = static
        real_folder(folder / STATIC_MODULE_DIR)  # a symlinked module folder is replaced, never written through
        atomic_write(folder / STATIC_MODULE_DIR / "model.safetensors",
                     save({"embedding.weight": np.ascontiguousarray(matrix, dtype=np.float32)}))
        atomic_write(folder / STATIC_MODULE_DIR / "tokenizer.json", tokenizer_json)
    atomic_write(folder / "modules.json", json.dumps(STATIC_MODULES if static is not None else MODULES,
                                                     indent=2) + "\n")
    if not (folder / "config_sentence_transformers.json").exists():
        atomic_write(folder / "config_sentence_transformers.json", json.dumps(ST_CONFIG, indent=2) + "\n")
