"""`tc export`: a student folder -> a model2vec folder (static students) or an ONNX folder (any architecture)."""

from __future__ import annotations

from typing import Annotated

import typer

from teacher_cache.base.errors import UserError


def export(
    model: Annotated[str, typer.Option(help="Student folder (from tc train-student), or the store URL it was "
                                            "trained into (s3://bucket/prefix; downloaded first).")] = "student_out",
    to: Annotated[str, typer.Option("--to", help="model2vec (static students: one folded embedding matrix that "
                                                 "model2vec's StaticModel loads) or onnx (every architecture, "
                                                 "for student.OnnxStudent / onnxruntime).")] = None,
    out: Annotated[str, typer.Option(help="Folder to write (written beside it first, renamed at the end), or a "
                                          "store URL (s3://bucket/prefix; built locally, then uploaded, "
                                          "config.json last).")] = None,
    dtype: Annotated[str, typer.Option(help="Stored weights: float32, float16 or int8 (model2vec: int8 rows "
                                            "with a scale per row; onnx: onnxruntime dynamic "
                                            "quantisation).")] = "float32",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty (never the --model "
                                             "folder, one inside it or one holding it; in a store, only an "
                                             "export's own objects).")] = False,
) -> None:
    """Export a student for where it is served: a model2vec folder or an ONNX graph, optionally quantised.

    The exported model is checked against the torch student on sample sentences before the folder is renamed
    into place; nothing half written is left behind (Ctrl-C and SIGTERM included). --out is locked for the run,
    an --out that overlaps --model is refused, and a killed export's temporary folder is removed by the next one.

    Example: tc export --model student_out/ --to onnx --out student_onnx/

    Example: tc export --model student_out/ --to model2vec --out student_m2v/ --dtype int8

    Example: tc export --model s3://bucket/students/x --to onnx --out s3://bucket/exports/x
    """
    from student.export.run import export_student

    if not to:
        raise UserError("--to: choose model2vec or onnx")
    if out is None:
        raise UserError("--out: name the folder to write")
    result = export_student(model, to, out, dtype=dtype, force=force)
    typer.echo(f"{result.out}: {result.format} ({result.dtype}), {result.bytes / 2**20:,.1f} MiB; cosine to the "
               f"torch student >= {result.min_cosine:.6f} on the check sentences")
