"""The teacher's forward passes: rows tokenised, length-sorted and packed into token-budget batches, pooled, and
run in bf16/fp16 only where a calibration batch shows the vectors stay within MIN_CALIBRATION_COSINE of fp32."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from teacher_cache.base.progress import log
from teacher_cache.encode.teacher import MIN_CALIBRATION_COSINE, Teacher, cpu_has_fast_bf16, load_teacher, pool

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_max_tokens(device: torch.device) -> int:
    """Token budget per forward pass: large enough to keep matmuls efficient, small enough for memory."""
    return 65_536 if device.type == "cuda" else 4_096


class BatchEncoder:
    """Tokenises, length-sorts and batches texts by token budget, and pools the teacher's output."""

    def __init__(self, teacher: Teacher, poolings: list[str], max_length: int, normalize: bool,
                 precision: str, max_tokens: int | None, batch_size: int | None):
        """Prepare a reusable encoder; `precision` must already be resolved (not 'auto')."""
        from tokenizers import Tokenizer

        self.teacher, self.poolings, self.max_length = teacher, poolings, max_length
        self.normalize, self.precision = normalize, precision
        self.batch_size = batch_size
        self.max_tokens = max_tokens or default_max_tokens(teacher.device)
        # An independent Rust tokenizer: truncation only, padding done here per batch.
        self.tokenizer = Tokenizer.from_str(teacher.tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.pad_id = teacher.tokenizer.pad_token_id or 0
        self.use_token_types = "token_type_ids" in teacher.tokenizer.model_input_names

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids of each text, truncated to max_length, special tokens added."""
        return [enc.ids for enc in self.tokenizer.encode_batch(texts)]

    def batches(self, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Row indices of each batch: longest first, packed up to the token budget (or fixed row count)."""
        order = np.argsort(-lengths, kind="stable")
        if self.batch_size:
            for i in range(0, len(order), self.batch_size):
                yield order[i:i + self.batch_size]
            return
        i = 0
        while i < len(order):
            longest = int(lengths[order[i]])
            rows = max(1, min(self.max_tokens // max(longest, 1), 1024))
            yield order[i:i + rows]
            i += rows

    def forward(self, ids: list[list[int]], precision: str | None = None) -> dict[str, torch.Tensor]:
        """Pad one batch, run the teacher once, and return each pooling's vectors (float32, on CPU)."""
        precision = precision or self.precision
        lengths = [len(x) for x in ids]
        width = max(lengths)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = seq
        dev = self.teacher.device
        input_t = torch.from_numpy(input_ids)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        if dev.type == "cuda":
            input_t, mask = input_t.pin_memory().to(dev, non_blocking=True), mask.pin_memory().to(dev)
        inputs = {"input_ids": input_t, "attention_mask": mask}
        if self.use_token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_t)
        low = LOW_PRECISION.get(precision)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None):
            out = self.teacher.model(**inputs)
            pooled = pool(out.last_hidden_state, mask, self.poolings, getattr(out, "pooler_output", None),
                          self.normalize)
        return {k: v.float().cpu() for k, v in pooled.items()}

    def encode_tokenized(self, token_ids: list[list[int]], on_batch=None) -> dict[str, np.ndarray]:
        """Vectors for pre-tokenised rows, returned in input order."""
        lengths = np.fromiter((len(x) for x in token_ids), dtype=np.int64, count=len(token_ids))
        out = {p: np.empty((len(token_ids), self.teacher.dim), dtype=np.float32) for p in self.poolings}
        for rows in self.batches(lengths):
            pooled = self.forward([token_ids[r] for r in rows])
            for name, vec in pooled.items():
                out[name][rows] = vec.numpy()
            if on_batch:
                on_batch(len(rows), int(lengths[rows].sum()))
        return out

    def calibrate(self, token_ids: list[list[int]]) -> tuple[bool, float]:
        """Compare this precision against fp32 on a sample; True when every cosine stays above the bar."""
        if self.precision == "fp32" or not token_ids:
            return True, 1.0
        sample = sorted(token_ids[:256], key=len)[-64:]  # the longest rows accumulate most rounding
        ref, low = self.forward(sample, "fp32"), self.forward(sample)
        worst = min(float(torch.nn.functional.cosine_similarity(ref[p], low[p]).min()) for p in self.poolings)
        return worst >= MIN_CALIBRATION_COSINE, worst


def resolve_precision(encoder: BatchEncoder, token_ids: list[list[int]], quiet: bool = False) -> str:
    """Pick bf16/fp16 where the hardware makes it pay and a calibration batch shows the vectors stay put."""
    dev = encoder.teacher.device
    candidate = "fp16" if dev.type == "cuda" else ("bf16" if cpu_has_fast_bf16() else "fp32")
    if candidate == "fp32":
        return "fp32"
    encoder.precision = candidate
    ok, worst = encoder.calibrate(token_ids)
    log(f"precision: {candidate} (min cosine to fp32 {worst:.6f})" if ok else
        f"precision: fp32 ({candidate} reached only cosine {worst:.6f} to fp32)", quiet)
    return candidate if ok else "fp32"


def teacher_encoder(name_or_path: str | None = None, device: str = "cpu", precision: str = "auto",
                    max_length: int = 256, pooling: str | None = None, max_tokens: int | None = None,
                    online: bool = False):
    """A function sentences -> vectors (np.ndarray) that pools exactly as `tc encode` does, for eval and queries."""
    teacher = load_teacher(name_or_path, device, online)
    poolings = [pooling or teacher.st_config.get("pooling", "mean")]
    normalize = bool(teacher.st_config.get("normalize", False))
    encoder = BatchEncoder(teacher, poolings, min(max_length, teacher.max_position), normalize, "fp32",
                           max_tokens, None)
    chosen = [precision]

    def encode(sentences: list[str]) -> np.ndarray:
        ids = encoder.tokenize(list(sentences))
        if chosen[0] == "auto":
            chosen[0] = resolve_precision(encoder, ids, quiet=True)
        encoder.precision = chosen[0]
        return encoder.encode_tokenized(ids)[poolings[0]]

    encode.teacher = teacher  # type: ignore[attr-defined]
    return encode
