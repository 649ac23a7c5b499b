"""`tc export`: a student folder -> a model2vec folder (static students) or an ONNX folder (every architecture).

Each export is written into a temporary folder beside the output, checked against the torch student on sample
sentences, and renamed into place at the end: a failed or interrupted export leaves nothing half written.

- model2vec: a mean-pooling static student is proj(mean_t w_t e_t) = mean_t proj(w_t e_t) (the bias included),
  so one matrix with row t = W (w_t e_t) + b reproduces it exactly under model2vec's mean over tokens. model2vec
  tokenises without [CLS]/[SEP] and drops [UNK] ids, as a static student does (config add_special_tokens false).
- onnx: the encoder graph (input_ids (batch, time) int64, lengths (batch,) int64 -> sentence_embedding), dynamic
  batch and length axes, read by student.OnnxStudent without torch.
- dtype: float16 stores the weights in half precision (ONNX: cast back to float32 when the graph loads); int8
  stores model2vec rows as int8 with one float32 scale per row (model2vec's own `weights` field, which it
  multiplies back in) and quantises an ONNX graph's weights with onnxruntime's dynamic quantisation.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from student.export_formats import check_model2vec_student, import_onnx, model2vec_vectors, write_model2vec, write_onnx
from student.onnx_student import OnnxStudent
from student.student import load_student_folder
from teacher_cache.errors import UserError

FORMATS = ("model2vec", "onnx")
DTYPES = ("float32", "float16", "int8")
# Sentences every export is checked on (unknown characters, an accent, a long one, a one-word one).
CHECK_SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon in late September.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates for the third time this year.",
    "Café owners in Zürich said the new rules were confusing 🙂 but fair.",
    "hello",
    "Two dogs run across a snowy field while a child watches from the window of a small wooden house.",
]


@dataclass
class ExportResult:
    """What an export wrote: the folder, its size on disk, and the worst cosine to the torch student."""

    out: Path
    format: str
    dtype: str
    bytes: int
    min_cosine: float


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two (n, d) arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(((a * b).sum(axis=1) / norms).min())


def folder_bytes(folder: Path) -> int:
    """Total size of the files in a folder."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# -------------------------------------------------------------------------------------------------------- export


def export_card(fmt: str, dtype: str, source: Path, dim: int, cosine: float) -> str:
    """README.md of an exported folder: what it is and how to load it."""
    if fmt == "model2vec":
        use = ("```python\nfrom model2vec import StaticModel\n\nmodel = StaticModel.from_pretrained(\"PATH\")\n"
               "vectors = model.encode([\"A sentence.\", \"Another one.\"])\n```\n\n"
               "sentence-transformers loads the same folder as it is, `SentenceTransformer(\"PATH\")` (its "
               "StaticEmbedding module; it keeps [UNK] tokens and does not truncate, so sentences with either "
               "differ slightly from model2vec's vectors).")
    else:
        use = ("```python\nfrom student import OnnxStudent   # needs tokenizers, numpy, onnxruntime; no torch\n\n"
               "model = OnnxStudent.from_pretrained(\"PATH\")\nvectors = model.encode([\"A sentence.\", "
               "\"Another one.\"], batch_size=32, normalize_embeddings=True)\n```\n\n"
               "The graph alone: inputs `input_ids` (batch, time) int64 and `lengths` (batch,) int64, output "
               "`sentence_embedding` (batch, dim); padding after each sentence is ignored.")
    tags = "\n".join(f"- {tag}" for tag in ("sentence-embeddings", "teacher-cache", fmt))
    return (f"---\nlibrary_name: {fmt}\ntags:\n{tags}\n---\n\n"
            f"# Student sentence encoder, exported to {fmt} ({dtype})\n\n"
            f"Written by `tc export --to {fmt} --dtype {dtype}` from the student folder `{source}`: {dim}-wide "
            f"sentence vectors, cosine to the torch student at least {cosine:.6f} on the export's check "
            f"sentences.\n\n## Use\n\n{use.replace('PATH', '.')}\n")


def export_student(model: str | Path, to: str, out: str | Path, dtype: str = "float32",
                   force: bool = False) -> ExportResult:
    """Export a student folder to `out` (model2vec or onnx), via a temporary folder renamed at the end."""
    if to not in FORMATS:
        raise UserError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    model, out = Path(model), Path(out)
    student = load_student_folder(model)
    if to == "model2vec":
        check_model2vec_student(student.config, model)
    else:
        import_onnx()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"--out {out}: exists and is not empty; pass --force to replace it")
    if out.resolve() == model.resolve():
        raise UserError(f"--out {out}: the same folder as --model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        reference = student.encode(CHECK_SENTENCES)
        if to == "model2vec":
            write_model2vec(student, tmp, dtype)
            got = model2vec_vectors(tmp, CHECK_SENTENCES)
        else:
            write_onnx(student, tmp, dtype)
            got = OnnxStudent.from_pretrained(tmp, threads=1).encode(CHECK_SENTENCES)
        cosine = min_cosine(reference, got)
        floor = 0.9999 if dtype == "float32" else 0.98
        if not cosine >= floor:
            raise UserError(f"--to {to} --dtype {dtype}: the exported model's vectors differ from the student's "
                             f"(cosine {cosine:.5f} < {floor}); nothing written to {out}")
        (tmp / "README.md").write_text(export_card(to, dtype, model, student.dim, cosine))
        (tmp / "export.json").write_text(json.dumps({"format": to, "dtype": dtype, "source": str(model),
                                                     "min_cosine": cosine}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, to, dtype, folder_bytes(out), cosine)
