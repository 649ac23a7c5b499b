"""A sentence-transformers module around a Student, so a student folder loads as a SentenceTransformer.

The folder's modules.json (written by Student.save_pretrained) names StudentSentenceEncoder; sentence-transformers
imports it from this installed package (nothing is downloaded, no code is read from the folder) and calls
`load`, which reads the folder with Student.from_pretrained. Vectors equal Student.encode's; the weights are
ordinary torch parameters, so sentence-transformers' losses and trainer fine-tune them, and `save` writes a
student folder again. sentence-transformers >= 6 asks for `trust_remote_code=True` before it imports any module
class outside its own namespace, an installed one included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from student.student import Student

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules import InputModule as _Base
except ImportError:  # pragma: no cover - older layouts
    try:  # sentence-transformers 4-5
        from sentence_transformers.models import InputModule as _Base
    except ImportError:  # sentence-transformers 3, or not installed: a plain module with the same methods
        _Base = nn.Module


class StudentSentenceEncoder(_Base):
    """The whole student (tokenizer + encoder) as one sentence-transformers input module."""

    save_in_root = True
    config_keys: list[str] = []

    def __init__(self, student: Student):
        """Wrap a loaded Student."""
        super().__init__()
        self.student = student
        self.tokenizer = student.tokenizer.tokenizer  # the `tokenizers` Tokenizer, as StaticEmbedding keeps it

    @property
    def max_seq_length(self) -> int:
        """Word-pieces kept per sentence (the student's truncation)."""
        return self.student.config.max_length

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Texts -> padded input_ids and lengths, exactly as Student.encode tokenises them."""
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        input_ids, lengths = self.student.tokenizer(texts)
        return {"input_ids": input_ids, "lengths": lengths}

    def tokenize(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        """The pre-6 name of preprocess (sentence-transformers 3-5 call this)."""
        return self.preprocess(texts)

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Add `sentence_embedding` (batch, dim) to the features."""
        features["sentence_embedding"] = self.student(features["input_ids"], features["lengths"])
        return features

    def get_embedding_dimension(self) -> int:
        """Width of the sentence vectors."""
        return self.student.dim

    def get_sentence_embedding_dimension(self) -> int:
        """Width of the sentence vectors (the pre-6 name)."""
        return self.student.dim

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Write a student folder (config.json, model.safetensors, tokenizer files) into `output_path`."""
        self.student.save_pretrained(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> StudentSentenceEncoder:
        """Read a student folder (a local path; a hub id only through sentence-transformers' own download)."""
        folder = Path(model_name_or_path) / subfolder
        if not folder.is_dir() and hasattr(cls, "load_dir_path"):
            folder = Path(cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token,
                                            cache_folder=cache_folder, revision=revision,
                                            local_files_only=local_files_only))
        return cls(Student.from_pretrained(folder))
