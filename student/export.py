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

import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from student.config import CONFIG_NAME, StudentConfig
from student.onnx_student import INPUT_NAMES, ONNX_EXTRA, ONNX_NAME, OUTPUT_NAME, OnnxStudent, import_onnxruntime
from student.student import Student
from teacher_cache.errors import CacheError

FORMATS = ("model2vec", "onnx")
DTYPES = ("float32", "float16", "int8")
MODEL2VEC_EXTRA = "pip install 'teacher-cache[model2vec]'"
OPSET = 17
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


def load_student_folder(path: str | Path) -> Student:
    """Load a student folder for export, with one line naming the folder when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"--model {path}: no such folder")
    config_file = path / CONFIG_NAME
    try:
        is_student = "arch" in json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        is_student = False
    if not is_student:
        raise CacheError(f"--model {path}: not a student folder (no student {CONFIG_NAME}; train one with "
                         "tc train-student)")
    return Student.from_pretrained(path)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two (n, d) arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(((a * b).sum(axis=1) / norms).min())


def folder_bytes(folder: Path) -> int:
    """Total size of the files in a folder."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------------- model2vec


def check_model2vec_student(config: StudentConfig, model: Path) -> None:
    """Raise a one-line error unless the student is what model2vec computes: a static mean without specials."""
    if config.arch != "static":
        raise CacheError(f"--to model2vec: {model} is a {config.arch} student; model2vec holds static students "
                         "only (use --to onnx for every architecture)")
    if config.pooling != "mean":
        raise CacheError(f"--to model2vec: {model} pools by {config.pooling}; model2vec takes the mean")
    if config.add_special_tokens:
        raise CacheError(f"--to model2vec: {model} was trained with [CLS]/[SEP] added; model2vec adds none")


def folded_matrix(student: Student) -> np.ndarray:
    """(vocab, out_dim) float32 rows proj(w_t e_t), bias included, computed in float64."""
    encoder = student.encoder
    with torch.no_grad():
        rows = encoder.embedding.weight.detach().double().cpu()
        if encoder.token_weights is not None:
            rows = rows * encoder.token_weights.weight.detach().double().cpu()
        matrix = rows @ encoder.proj.weight.detach().double().cpu().T + encoder.proj.bias.detach().double().cpu()
    return matrix.float().numpy()


def quantize_rows_int8(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (int8 rows, float32 scale per row) with rows ~= int8 * scale."""
    peak = np.abs(matrix).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(matrix / scale[:, None]), -127, 127).astype(np.int8)
    return quantized, scale


def write_model2vec(student: Student, folder: Path, dtype: str) -> None:
    """Write the folded static student as a model2vec folder (model2vec's own save_pretrained)."""
    try:
        from model2vec import StaticModel
    except ImportError:
        raise CacheError(f"--to model2vec needs model2vec: {MODEL2VEC_EXTRA}") from None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(student.tokenizer_files["tokenizer.json"].decode())
    matrix, weights = folded_matrix(student), None
    if matrix.shape[0] != tokenizer.get_vocab_size(with_added_tokens=True):
        raise CacheError(f"--to model2vec: the student has {matrix.shape[0]} embedding rows but its tokenizer "
                         f"{tokenizer.get_vocab_size(with_added_tokens=True)} tokens")
    if dtype == "float16":
        matrix = matrix.astype(np.float16)
    elif dtype == "int8":
        matrix, weights = quantize_rows_int8(matrix)
    config = {"model_type": "model2vec", "architectures": ["StaticModel"], "hidden_dim": int(matrix.shape[1]),
              "seq_length": student.config.max_length, "normalize": False, "apply_pca": None,
              "tokenizer_name": student.config.teacher.get("name"), "source": "teacher-cache student"}
    model = StaticModel(vectors=matrix, tokenizer=tokenizer, config=config, normalize=False, weights=weights,
                        base_model_name=student.config.teacher.get("name"), max_length=student.config.max_length)
    model.save_pretrained(folder)


def model2vec_vectors(folder: Path, sentences: list[str]) -> np.ndarray:
    """Encode with model2vec's StaticModel loaded from `folder`."""
    from model2vec import StaticModel

    return np.asarray(StaticModel.from_pretrained(folder).encode(sentences, use_multiprocessing=False),
                      dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------- onnx


def import_onnx() -> None:
    """Raise a one-line error unless onnx and onnxruntime are installed."""
    import_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CacheError(f"onnx is not installed: {ONNX_EXTRA}") from None


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence what torch's exporter and onnxruntime's quantiser print outside Python's warnings (fd 2, logging)."""
    sys.stderr.flush()
    saved, root = os.dup(2), logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            root.setLevel(level)


def write_onnx_graph(student: Student, path: Path) -> None:
    """Trace the encoder into an ONNX graph with dynamic batch and length axes (torch's TorchScript exporter)."""
    encoder = student.encoder.eval().to("cpu")
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]], dtype=torch.long)
    lengths = torch.tensor([5, 3], dtype=torch.long)
    kwargs = dict(input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=OPSET,
                  dynamic_axes={INPUT_NAMES[0]: {0: "batch", 1: "time"}, INPUT_NAMES[1]: {0: "batch"},
                                OUTPUT_NAME: {0: "batch"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter handles packed LSTM sequences; torch.export does not
    with warnings.catch_warnings(), torch.no_grad(), quiet_native_output():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (ids, lengths), str(path), **kwargs)


def onnx_weights_to_float16(path: Path) -> None:
    """Store every float32 weight of at least 64 values as float16, cast back to float32 when the graph runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= 64:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=init.name + "__cast"))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_weights_to_int8(path: Path) -> None:
    """onnxruntime dynamic quantisation: int8 weights for Gather (embeddings), MatMul, Conv and LSTM."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = path.with_name("model.float32.onnx")
    path.rename(source)
    try:
        with quiet_native_output():
            quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
    finally:
        source.unlink(missing_ok=True)


def write_onnx(student: Student, folder: Path, dtype: str) -> None:
    """Write model.onnx, config.json and the tokenizer files into `folder`."""
    import_onnx()
    path = folder / ONNX_NAME
    write_onnx_graph(student, path)
    if dtype == "float16":
        onnx_weights_to_float16(path)
    elif dtype == "int8":
        onnx_weights_to_int8(path)
    student.config.save(folder)
    for name, data in student.tokenizer_files.items():
        (folder / name).write_bytes(data)


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
        raise CacheError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise CacheError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    model, out = Path(model), Path(out)
    student = load_student_folder(model)
    if to == "model2vec":
        check_model2vec_student(student.config, model)
    else:
        import_onnx()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CacheError(f"--out {out}: exists and is not empty; pass --force to replace it")
    if out.resolve() == model.resolve():
        raise CacheError(f"--out {out}: the same folder as --model")
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
            raise CacheError(f"--to {to} --dtype {dtype}: the exported model's vectors differ from the student's "
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
