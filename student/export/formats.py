"""The two export formats of `tc export` (student/export/run.py checks and places what these write): a model2vec folder
(static students, one folded matrix) and an ONNX graph (every architecture), each optionally quantised."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from student.config import StudentConfig
from student.export.onnx_student import INPUT_NAMES, ONNX_EXTRA, ONNX_NAME, OUTPUT_NAME, import_onnxruntime
from student.static_encode import folded_static_matrix
from student.student import Student
from teacher_cache.base.errors import UserError

MODEL2VEC_EXTRA = "pip install 'teacher-cache[model2vec]'"
OPSET = 17


# ---------------------------------------------------------------------------------------------------- model2vec


def check_model2vec_student(config: StudentConfig, model: str | Path) -> None:
    """Raise a one-line error unless the student is what model2vec computes: a static mean without specials."""
    if config.arch != "static":
        raise UserError(f"--to model2vec: {model} is a {config.arch} student; model2vec holds static students "
                         "only (use --to onnx for every architecture)")
    if config.pooling != "mean":
        raise UserError(f"--to model2vec: {model} pools by {config.pooling}; model2vec takes the mean")
    if config.add_special_tokens:
        raise UserError(f"--to model2vec: {model} was trained with [CLS]/[SEP] added; model2vec adds none")


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
        raise UserError(f"--to model2vec needs model2vec: {MODEL2VEC_EXTRA}") from None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(student.tokenizer_files["tokenizer.json"].decode())
    matrix, weights = folded_static_matrix(student.encoder), None
    if matrix.shape[0] != tokenizer.get_vocab_size(with_added_tokens=True):
        raise UserError(f"--to model2vec: the student has {matrix.shape[0]} embedding rows but its tokenizer "
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
        raise UserError(f"onnx is not installed: {ONNX_EXTRA}") from None


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
