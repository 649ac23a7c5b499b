"""OnnxStudent: encode with a student exported by `tc export --to onnx`, using tokenizers, numpy and onnxruntime only.

No torch is imported: the folder holds model.onnx (dynamic batch and length axes), the student's config.json and
its tokenizer files, and encoding tokenises, pads and batches exactly as Student.encode does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from student.config import StudentConfig
from student.tokenizer import WordPieceTokenizer, encode_inputs, pad_ids
from teacher_cache.base.errors import UserError, first_line

ONNX_NAME = "model.onnx"
INPUT_NAMES = ("input_ids", "lengths")
OUTPUT_NAME = "sentence_embedding"
ONNX_EXTRA = "pip install 'teacher-cache[onnx]'"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"onnxruntime is not installed: {ONNX_EXTRA}") from None
    return onnxruntime


class OnnxStudent:
    """A student's ONNX graph and tokenizer; `encode` matches Student.encode (cosine > 0.9999, tested)."""

    def __init__(self, session: Any, config: StudentConfig, tokenizer_json: bytes | str):
        """Wrap an onnxruntime InferenceSession of a student graph, with its config and tokenizer.json."""
        self.session = session
        self.config = config
        self.tokenizer = WordPieceTokenizer(tokenizer_json, config.max_length, config.pad_id,
                                            add_special_tokens=config.add_special_tokens,
                                            drop_unk=not config.add_special_tokens)

    @property
    def dim(self) -> int:
        """Width of the sentence vectors."""
        return self.config.out_dim

    @classmethod
    def from_pretrained(cls, path: str | Path, threads: int | None = None,
                        providers: Sequence[str] | None = None) -> OnnxStudent:
        """Load a folder written by `tc export --to onnx` (threads: onnxruntime intra-op threads, None = its own)."""
        ort = import_onnxruntime()
        path = Path(path)
        model = path / ONNX_NAME
        if not model.exists():
            raise UserError(f"{path}: no {ONNX_NAME} (write one with tc export --to onnx)")
        config = StudentConfig.load(path)
        if not (path / "tokenizer.json").exists():
            raise UserError(f"{path}: no tokenizer.json")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model), options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise UserError(f"{model}: onnxruntime cannot load it ({first_line(exc)})") from None
        return cls(session, config, (path / "tokenizer.json").read_bytes())

    def forward(self, id_lists: list[list[int]]) -> np.ndarray:
        """(n, dim) float32 vectors of n id lists (padded here)."""
        ids, lengths = pad_ids(id_lists, self.tokenizer.pad_id)
        out = self.session.run([OUTPUT_NAME], {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: lengths})[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32,
               normalize_embeddings: bool = False, **kwargs: Any) -> np.ndarray:
        """Sentence vectors (n, dim) float32 in input order (1-D for a single str); batching never changes them."""
        texts, single = encode_inputs(sentences, batch_size)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first, as Student.encode
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            out[index] = self.forward(self.tokenizer.ids([texts[i] for i in index]))
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out
