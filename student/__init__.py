"""Students distilled from a teacher cache: BiLSTM (the paper's), CNN and static encoders behind one interface."""

from student.config import StudentConfig
from student.student import Student

__all__ = ["Student", "StudentConfig"]
