"""The teacher's word-piece tokenizer (the `tokenizers` library only), truncating and padding to tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from teacher_cache.errors import CacheError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def read_tokenizer_files(folder: str | Path) -> dict[str, bytes]:
    """The tokenizer files found in `folder` (tokenizer.json required), as bytes, to copy with a student."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        raise CacheError(f"{folder}: no tokenizer.json (a student needs the teacher's fast tokenizer)")
    return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}


class WordPieceTokenizer:
    """Text -> truncated id lists -> (padded ids, lengths) tensors; special tokens kept as the teacher adds them."""

    def __init__(self, tokenizer_json: bytes | str, max_length: int, pad_id: int | None = None):
        """Build from the contents of tokenizer.json, truncating to `max_length` ids."""
        text = tokenizer_json.decode() if isinstance(tokenizer_json, bytes) else tokenizer_json
        self.tokenizer = Tokenizer.from_str(text)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        found = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad_id if pad_id is not None else (found if found is not None else 0)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Truncated id lists, one per text (never empty: special tokens are added)."""
        return [enc.ids or [self.pad_id] for enc in self.tokenizer.encode_batch(texts)]

    def pad(self, id_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, longest) LongTensor padded with pad_id, and the (batch,) lengths."""
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        out = np.full((len(id_lists), int(lengths.max()) if len(id_lists) else 0), self.pad_id, dtype=np.int64)
        for row, ids in enumerate(id_lists):
            out[row, : len(ids)] = ids
        return torch.from_numpy(out), torch.from_numpy(lengths)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and pad a batch of texts."""
        return self.pad(self.ids(texts))
