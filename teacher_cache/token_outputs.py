"""The teacher's output vector for every vocabulary token, computed once and carried in the cache.

Each token t is run through the teacher alone, as `[CLS] t [SEP]`, and the hidden states are mean-pooled (not
normalised): what model2vec's `distill` does, so a static student initialised from these rows starts where
model2vec ends. Stored beside token_embeddings.safetensors as TOKEN_OUTPUTS_FILE (float16, vocab x dim).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from teacher_cache.atomic import atomic_path
from teacher_cache.teacher import Teacher

TOKEN_OUTPUTS_FILE = "token_outputs.safetensors"
TOKEN_OUTPUTS_KEY = "token_outputs"


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
    use_token_types = "token_type_ids" in teacher.tokenizer.model_input_names
    for first in range(0, vocab, batch_size):
        ids = torch.arange(first, min(vocab, first + batch_size))
        columns = [ids if x == "token" else torch.full_like(ids, x) for x in frame]
        input_ids = torch.stack(columns, dim=1).to(teacher.device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if use_token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        with torch.inference_mode():
            hidden = teacher.model(**inputs).last_hidden_state.float()
        out[first:first + len(ids)] = hidden.mean(dim=1).cpu().numpy()
    return out


def save_token_outputs(teacher: Teacher, out: Path) -> bool:
    """Write TOKEN_OUTPUTS_FILE into the cache folder `out` (atomically) unless it is there; True when written."""
    from safetensors.numpy import save_file

    target = out / TOKEN_OUTPUTS_FILE
    if target.exists():
        return False
    with atomic_path(target) as tmp:
        save_file({TOKEN_OUTPUTS_KEY: compute_token_outputs(teacher).astype(np.float16)}, str(tmp))
    return True
