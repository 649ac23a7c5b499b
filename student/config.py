"""StudentConfig: the architecture and sizes of a student, saved as config.json next to its weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.errors import UserError, first_line
from teacher_cache.base.safe_paths import a_type, shown

ARCHS = ("bilstm", "cnn", "static")
POOLINGS = ("max", "mean")
# Per-architecture defaults for the knobs left as None: (emb_dim, hidden, pooling).
ARCH_DEFAULTS = {"bilstm": (300, 512, "max"), "cnn": (300, 256, "max"), "static": (256, 0, "mean")}
CONFIG_NAME = "config.json"
# What a config.json from disk may hold: (JSON type, largest value) per field; a bigger number is refused in one
# line rather than allocated (a 10**12-row embedding). A student folder names no other file: its files are fixed.
LOAD_LIMITS = {"vocab_size": (int, 10 ** 7), "emb_dim": (int, 1 << 14), "hidden": (int, 1 << 14),
               "layers": (int, 64), "out_dim": (int, 1 << 14), "max_length": (int, 1 << 20),
               "dropout": (float, 1.0), "pad_id": (int, 10 ** 7), "arch": (str, None), "pooling": (str, None),
               "token_weights": (bool, None), "static_path": (bool, None), "add_special_tokens": (bool, None),
               "teacher": (dict, None), "kernel_sizes": (list, None)}
MAX_EMBEDDING = 1 << 31
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
              list: "a list"}


@dataclass
class StudentConfig:
    """What a student is: architecture, vocabulary, widths, pooling, output width, truncation."""

    arch: str = "bilstm"
    vocab_size: int = 30522
    emb_dim: int | None = None
    hidden: int | None = None  # bilstm: units per direction; cnn: channels per kernel width; static: unused
    layers: int = 1
    pooling: str | None = None  # max or mean over time (masked)
    out_dim: int = 384
    max_length: int = 256
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7])  # cnn only; odd widths keep lengths
    dropout: float = 0.0
    token_weights: bool = False  # static (and a static path's): a learnt scalar weight per vocabulary entry
    static_path: bool = False  # cnn, bilstm: add a static student's (weighted mean + linear) path to the output
    add_special_tokens: bool | None = None  # [CLS]/[SEP] in the input; None: yes except for static (as model2vec)
    pad_id: int = 0
    teacher: dict = field(default_factory=dict)  # where the targets came from (name, hash, column, pooling)

    def __post_init__(self) -> None:
        """Fill the architecture defaults, then check every field."""
        if self.arch not in ARCHS:
            raise UserError(f"--arch {self.arch}: choose one of {', '.join(ARCHS)}")
        emb, hidden, pooling = ARCH_DEFAULTS[self.arch]
        self.emb_dim = emb if self.emb_dim is None else self.emb_dim
        self.hidden = hidden if self.hidden is None else self.hidden
        self.pooling = pooling if self.pooling is None else self.pooling
        if self.add_special_tokens is None:
            self.add_special_tokens = self.arch != "static"
        self.validate()

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad field."""
        checks = [
            (self.vocab_size > 0, f"vocab_size {self.vocab_size}: must be positive"),
            (self.emb_dim > 0, f"--emb-dim {self.emb_dim}: must be positive"),
            (self.arch == "static" or self.hidden > 0, f"--hidden {self.hidden}: must be positive"),
            (self.layers > 0, f"layers {self.layers}: must be positive"),
            (self.pooling in POOLINGS, f"pooling {self.pooling}: choose one of {', '.join(POOLINGS)}"),
            (self.out_dim > 0, f"out_dim {self.out_dim}: must be positive"),
            (self.max_length >= 2, f"max_length {self.max_length}: must be at least 2"),
            (bool(self.kernel_sizes) and all(k > 0 and k % 2 == 1 for k in self.kernel_sizes),
             f"kernel_sizes {self.kernel_sizes}: need odd positive widths"),
            (0.0 <= self.dropout < 1.0, f"dropout {self.dropout}: must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        """Build from JSON, ignoring keys this version does not know."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: str | Path) -> None:
        """Write config.json into `folder` (atomically: a link planted at its name is replaced, not followed)."""
        atomic_write(Path(folder) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> StudentConfig:
        """Read config.json from a student folder, with a one-line error when it is not one."""
        return cls.from_json(read_config_json(folder), Path(folder))

    @classmethod
    def from_json(cls, data: object, folder: Path) -> StudentConfig:
        """The config of `folder` from its config.json's contents (`read_config_json`), every field checked; a
        one-line error when it is not a student's."""
        path = folder / CONFIG_NAME
        if not isinstance(data, dict) or "arch" not in data:
            raise UserError(f"{folder}: not a student folder (its {CONFIG_NAME} has no student 'arch'; a "
                            "transformers model?)")
        check_loaded(data, path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: unreadable student config ({first_line(exc)})") from None


def read_config_json(folder: str | Path) -> object:
    """The contents of a model folder's config.json (a student's, or a transformers model's), or a one-line error
    when the folder is missing, is a teacher cache, or has no readable config.json."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if (folder / "manifest.json").exists():
        raise UserError(f"{folder}: a teacher cache, not a student folder (train one with tc train-student)")
    if not path.exists():
        raise UserError(f"{folder}: not a student folder (no {CONFIG_NAME}; train one with tc train-student)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise UserError(f"{path}: unreadable student config ({first_line(exc)})") from None


def field_problem(value: object, kind: type, limit: int | float | None) -> str | None:
    """Why one config.json value is not of `kind` within `limit` (None: it is; JSON null always passes here)."""
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        return f"{a_type(value)}, not {KIND_NAMES[kind]}"
    if limit is not None and not 0 <= value <= limit:
        return f"outside 0..{limit:,}"
    if kind is list and not all(isinstance(k, int) and not isinstance(k, bool) and 0 < k <= 1025 for k in value):
        return "not a list of widths 1..1025"
    return None


def check_loaded(data: dict, path: Path) -> None:
    """Refuse, in one line naming the file and field, a config.json value of a wrong type or an absurd size."""
    for key, (kind, limit) in LOAD_LIMITS.items():
        problem = field_problem(data.get(key), kind, limit)
        if problem:
            raise UserError(f"{path}: {key} = {shown(data[key], 80)}: {problem}")
    weights = (data.get("vocab_size") or 0) * (data.get("emb_dim") or 300)  # 300: the widest default
    if weights > MAX_EMBEDDING:
        raise UserError(f"{path}: vocab_size x emb_dim = {weights:,}: more than {MAX_EMBEDDING:,} weights; not a "
                        "student this toolkit writes")
