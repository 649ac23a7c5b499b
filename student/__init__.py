"""Students distilled from a teacher cache: BiLSTM (the paper's), CNN and static encoders behind one interface.

`Student` (torch) and `OnnxStudent` (onnxruntime, no torch) are imported on first use, so
`from student import OnnxStudent` never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from student.config import StudentConfig

if TYPE_CHECKING:
    from student.export.onnx_student import OnnxStudent
    from student.student import Student

__all__ = ["OnnxStudent", "Student", "StudentConfig"]
_LAZY = {"Student": "student.student", "OnnxStudent": "student.export.onnx_student"}


def __getattr__(name: str) -> Any:
    """Import Student / OnnxStudent on first access."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'student' has no attribute {name!r}")
