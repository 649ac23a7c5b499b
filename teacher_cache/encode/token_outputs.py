"""The teacher's output vector for every vocabulary token, computed once and carried in the cache.

Each token t is run through the teacher alone, as `[CLS] t [SEP]`, and the hidden states are mean-pooled (not
normalised): what model2vec's `distill` does, so a static student initialised from these rows starts where
model2vec ends. Stored beside token_embeddings.safetensors as TOKEN_OUTPUTS_FILE (float16, vocab x dim).

They depend on the teacher's weights only, not on the corpus, and cost a pass over the whole vocabulary (13 s for
all-MiniLM-L6-v2's 30,522 word-pieces on 2 CPU cores): each teacher's are computed once and kept in the user's
cache folder (`user_cache_dir()`, keyed by the weights hash), so every later cache of that teacher copies them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from teacher_cache.base.atomic import atomic_path, fresh_file
from teacher_cache.base.progress import note
from teacher_cache.base.user_dirs import user_cache_dir
from teacher_cache.encode.teacher import Teacher
from teacher_cache.manifest import TOKEN_OUTPUTS_FILE, TOKEN_OUTPUTS_KEY


def token_frame_ids(teacher: Teacher) -> tuple[int | None, int | None]:
    """The ids the teacher's tokenizer puts before and after a single token ([CLS]/[SEP], <s>/</s>)."""
    tok = teacher.tokenizer
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    return start, end


def compute_token_outputs(teacher: Teacher, batch_size: int = 1024) -> np.ndarray:
    """(vocab, dim) float32: the teacher's mean-pooled output for each vocabulary id run on its own (fp32)."""
    vocab = min(len(teacher.tokenizer), teacher.model.get_input_embeddings().weight.shape[0])
    start, end = token_frame_ids(teacher)
    frame = [x for x in (start, "token", end) if x is not None]
    out = np.empty((vocab, teacher.dim), dtype=np.float32)
    for first in range(0, vocab, batch_size):
        ids = torch.arange(first, min(vocab, first + batch_size))
        columns = [ids if x == "token" else torch.full_like(ids, x) for x in frame]
        out[first:first + len(ids)] = mean_output(teacher, torch.stack(columns, dim=1))
    return out


def mean_output(teacher: Teacher, input_ids: torch.Tensor) -> np.ndarray:
    """(rows, dim) float32: the teacher's last hidden states mean-pooled over rows of ids with no padding."""
    input_ids = input_ids.to(teacher.device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in teacher.tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    with torch.inference_mode():
        hidden = teacher.model(**inputs).last_hidden_state.float()
    return hidden.mean(dim=1).cpu().numpy()


def shared_copy_path(teacher_hash: str, kind: str = "token-outputs") -> Path:
    """The user-cache file of one teacher's token outputs (or other per-teacher matrix `kind`); the hash is hex
    (a '-' may join two), so the name stays in its folder."""
    if not teacher_hash or not all(c in "0123456789abcdef-" for c in teacher_hash):
        raise ValueError(f"not a weights hash: {teacher_hash!r}")
    return user_cache_dir() / kind / f"{teacher_hash}.safetensors"


def load_shared_copy(teacher_hash: str, shape: tuple[int, int], kind: str = "token-outputs",
                     key: str = TOKEN_OUTPUTS_KEY) -> np.ndarray | None:
    """The kept token outputs (or `kind`) of this teacher when they are there and well formed (shape, float16,
    finite)."""
    from safetensors.numpy import load_file

    path = shared_copy_path(teacher_hash, kind)
    try:
        if path.is_symlink() or not path.is_file():
            return None
        matrix = load_file(str(path)).get(key)
    except Exception:  # unreadable or truncated: computed again and replaced
        return None
    if matrix is None or matrix.shape != shape or matrix.dtype != np.float16 or not np.isfinite(matrix).all():
        return None
    return matrix


def keep_shared_copy(teacher_hash: str, matrix: np.ndarray, kind: str = "token-outputs",
                     key: str = TOKEN_OUTPUTS_KEY) -> None:
    """Keep the token outputs (or `kind`) in the user cache for the next cache of this teacher (best effort: a
    failure only means they are computed again next time)."""
    from safetensors.numpy import save_file

    path = shared_copy_path(teacher_hash, kind)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: two encodes may race here
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh_file(tmp)  # a predictable name: a link planted there is replaced, never written through
        save_file({key: matrix}, str(tmp))
        os.replace(tmp, path)
    except Exception as exc:  # a read-only home or a full disk must not fail the encode
        tmp.unlink(missing_ok=True)
        note(f"could not keep the {kind} in {path.parent} ({exc}); they are computed again next time")


def save_token_outputs(teacher: Teacher, out: Path, teacher_hash: str | None = None) -> bool:
    """Write TOKEN_OUTPUTS_FILE into the cache folder `out` (atomically) unless it is there; True when written.

    Copied from the user cache when this teacher's are kept there (`teacher_hash`, default computed), else
    computed and kept there too.
    """
    from safetensors.numpy import save_file

    target = out / TOKEN_OUTPUTS_FILE
    if target.exists():
        return False
    teacher_hash = teacher_hash or teacher.weights_hash()
    vocab = min(len(teacher.tokenizer), teacher.model.get_input_embeddings().weight.shape[0])
    matrix = load_shared_copy(teacher_hash, (vocab, teacher.dim))
    if matrix is None:
        matrix = compute_token_outputs(teacher).astype(np.float16)
        keep_shared_copy(teacher_hash, matrix)
    with atomic_path(target) as tmp:
        save_file({TOKEN_OUTPUTS_KEY: matrix}, str(tmp))
    return True
