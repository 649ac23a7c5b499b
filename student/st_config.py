"""The sentence-transformers files of a student folder: modules.json and config_sentence_transformers.json.

They name one module class of this package, student.st_module.StudentSentenceEncoder, so the folder loads as
`SentenceTransformer("student_out/", trust_remote_code=True)`. Nothing here imports sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from teacher_cache.atomic import atomic_write

MODULE_CLASS = "student.st_module.StudentSentenceEncoder"
MODULES = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS}]
ST_CONFIG = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
             "similarity_fn_name": "cosine"}


def write_sentence_transformers_files(folder: str | Path) -> None:
    """Write modules.json (and config_sentence_transformers.json unless present) into a student folder, atomically.

    An existing config_sentence_transformers.json is kept: SentenceTransformer.save writes its own before it
    saves the modules, with the prompts and similarity function the user set.
    """
    folder = Path(folder)
    atomic_write(folder / "modules.json", json.dumps(MODULES, indent=2) + "\n")
    if not (folder / "config_sentence_transformers.json").exists():
        atomic_write(folder / "config_sentence_transformers.json", json.dumps(ST_CONFIG, indent=2) + "\n")
