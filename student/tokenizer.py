"""The teacher's word-piece tokenizer (the `tokenizers` library only), truncating and padding to tensors.

Imports no torch until tensors are asked for, so the ONNX runtime (student.export.onnx_student) shares it.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from teacher_cache.base.errors import UserError

if TYPE_CHECKING:
    import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def read_tokenizer_files(folder: str | Path) -> dict[str, bytes]:
    """The tokenizer files found in `folder` (tokenizer.json required), as bytes, to copy with a student."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        raise UserError(f"{folder}: no tokenizer.json (a student needs the teacher's fast tokenizer)")
    return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}


class WordPieceTokenizer:
    """Text -> truncated id lists -> (padded ids, lengths) tensors; special tokens kept as the teacher adds them."""

    def __init__(self, tokenizer_json: bytes | str, max_length: int, pad_id: int | None = None,
                 add_special_tokens: bool = True, drop_unk: bool = False):
        """Build from the contents of tokenizer.json, truncating to `max_length` ids (special tokens optional).

        `drop_unk` removes [UNK] ids after truncation, as model2vec's StaticModel.tokenize does.
        """
        text = tokenizer_json.decode() if isinstance(tokenizer_json, bytes) else tokenizer_json
        self.tokenizer = Tokenizer.from_str(text)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.add_special_tokens = add_special_tokens
        self.unk_id = self.tokenizer.token_to_id(getattr(self.tokenizer.model, "unk_token", None) or "[UNK]")
        self.drop_unk = drop_unk and self.unk_id is not None
        fast = getattr(self.tokenizer, "encode_batch_fast", None)  # same ids, no offsets (tokenizers >= 0.20)
        self._encode_batch = fast or self.tokenizer.encode_batch
        # '<pad>' first: RoBERTa-style vocabularies (MPNet) also hold BERT's '[PAD]' as an ordinary token
        found = next((i for i in map(self.tokenizer.token_to_id, ("<pad>", "[PAD]")) if i is not None), 0)
        self.pad_id = pad_id if pad_id is not None else found

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Truncated id lists, one per text (never empty: an empty text becomes one pad id)."""
        encodings = self._encode_batch(texts, add_special_tokens=self.add_special_tokens)
        if self.drop_unk:
            unk = self.unk_id
            return [[i for i in enc.ids if i != unk] or [self.pad_id] for enc in encodings]
        return [enc.ids or [self.pad_id] for enc in encodings]

    def pad(self, id_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, longest) LongTensor padded with pad_id, and the (batch,) lengths."""
        import torch

        out, lengths = pad_ids(id_lists, self.pad_id)
        return torch.from_numpy(out), torch.from_numpy(lengths)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and pad a batch of texts."""
        return self.pad(self.ids(texts))


def pad_ids(id_lists: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(batch, longest) int64 array padded with pad_id, and the (batch,) int64 lengths; no Python loop per row."""
    lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
    out = np.full((len(id_lists), int(lengths.max()) if len(id_lists) else 0), pad_id, dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    out[np.arange(out.shape[1])[None, :] < lengths[:, None]] = flat  # row-major: each row's ids in order
    return out, lengths


def encode_inputs(sentences, batch_size: int) -> tuple[list[str], bool]:
    """encode()'s argument check, shared by Student and OnnxStudent: (texts, whether a single str was given)."""
    single = isinstance(sentences, str)
    texts = [sentences] if single else list(sentences)
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("encode() takes a str or a sequence of str")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    return texts, single
