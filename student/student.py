"""Student: a small sentence encoder distilled from a cached teacher; loads and encodes like sentence-transformers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from student.config import StudentConfig
from student.models import build_encoder
from student.st_config import write_sentence_transformers_files
from student.static_encode import folded_static_matrix, static_sentence_vectors, supports_fast_path
from student.tokenizer import WordPieceTokenizer, encode_inputs, read_tokenizer_files
from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.errors import UserError, first_line
from teacher_cache.base.progress import Progress

WEIGHTS_NAME = "model.safetensors"
STATIC_CHUNK = 2048  # sentences tokenised and gathered at once by the static fast path


class Student(nn.Module):
    """Tokenizer + encoder. `encode(sentences)` returns one teacher-width vector per sentence, in input order."""

    def __init__(self, config: StudentConfig, tokenizer_files: dict[str, bytes]):
        """A randomly initialised student with `config`, tokenizing with the given tokenizer files."""
        super().__init__()
        if "tokenizer.json" not in tokenizer_files:
            raise UserError("a student needs tokenizer.json among its tokenizer files")
        self.config = config
        self.tokenizer_files = dict(tokenizer_files)
        self.tokenizer = WordPieceTokenizer(tokenizer_files["tokenizer.json"], config.max_length, config.pad_id,
                                            add_special_tokens=config.add_special_tokens,
                                            drop_unk=not config.add_special_tokens)  # as model2vec tokenises
        self.encoder = build_encoder(config)

    @classmethod
    def from_tokenizer_dir(cls, config: StudentConfig, folder: str | Path) -> Student:
        """A new student whose vocabulary is the tokenizer in `folder` (a cache's tokenizer/ folder)."""
        return cls(config, read_tokenizer_files(folder))

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        """Width of the sentence vectors (the teacher's)."""
        return self.config.out_dim

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) padded ids and (batch,) lengths -> (batch, out_dim) sentence vectors."""
        return self.encoder(input_ids, lengths)

    def set_sparse(self, sparse: bool) -> None:
        """Make the embedding produce sparse gradients (for torch.optim.SparseAdam) or dense ones."""
        for module in self.encoder.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = sparse

    def num_parameters(self) -> int:
        """Number of weights."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> Student:
        """Load a student folder written by save_pretrained (no cache and no teacher needed); a store URL
        (s3://bucket/students/x) is downloaded into the user cache dir first."""
        from safetensors.torch import load_file

        from student.remote import student_folder

        path = student_folder(path, "from_pretrained")
        config = StudentConfig.load(path)
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            raise UserError(f"{path}: no {WEIGHTS_NAME}")
        student = cls(config, read_tokenizer_files(path))
        try:
            state = load_file(str(weights))
        except Exception as exc:  # a truncated or foreign file (safetensors raises its own error type)
            raise UserError(f"{weights}: unreadable weights ({first_line(exc)})") from None
        try:
            student.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{weights}: weights do not match config.json ({first_line(exc)})") from None
        return student.to(device or "cpu").eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json, model.safetensors, the tokenizer files and modules.json into `path` (created).

        modules.json makes the folder load as `SentenceTransformer(path, trust_remote_code=True)` too.
        """
        from safetensors.torch import save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save(path)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, save(state, metadata={"format": "pt", "arch": self.config.arch}))
        for name, data in self.tokenizer_files.items():
            atomic_write(path / name, data)  # a link planted at the name is replaced, never written through
        write_sentence_transformers_files(path, self.sentence_transformers_static())

    def sentence_transformers_static(self) -> tuple[np.ndarray, bytes] | None:
        """For a static student tokenising as model2vec: its folded matrix ([UNK] row zero) and tokenizer.json,
        to save as sentence-transformers' own StaticEmbedding; None for every other student."""
        if not supports_fast_path(self.encoder) or self.config.add_special_tokens:
            return None
        matrix = folded_static_matrix(self.encoder)
        if self.tokenizer.unk_id is not None and self.tokenizer.drop_unk:
            matrix[self.tokenizer.unk_id] = 0.0  # the student drops [UNK]: a zero row only scales the mean
        return matrix, self.tokenizer_files["tokenizer.json"]

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False,
               show_progress_bar: bool | None = None, convert_to_tensor: bool = False,
               device: str | None = None) -> np.ndarray | torch.Tensor:
        """Sentence vectors (n, dim) in input order (1-D for a single str); batching never changes the result."""
        texts, single = encode_inputs(sentences, batch_size)
        if device is not None:
            self.to(device)
        fast = supports_fast_path(self.encoder)  # static: one bag gather per chunk, no padding, no sorting
        if fast:
            order, step = np.arange(len(texts)), max(batch_size, STATIC_CHUNK)
        else:  # longest first, as sentence-transformers
            order, step = np.argsort([-len(t) for t in texts], kind="stable"), batch_size
        out = torch.empty(len(texts), self.dim)
        progress = Progress("encode", len(texts), "sentences", quiet=not show_progress_bar,
                            always=bool(show_progress_bar))
        was_training, dev = self.training, self.device
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), step):
                    index = order[start:start + step]
                    batch = [texts[i] for i in index]
                    if fast:
                        vectors = static_sentence_vectors(self.encoder, self.tokenizer.ids(batch)).float()
                    else:
                        ids, lengths = self.tokenizer(batch)
                        vectors = self(ids.to(dev), lengths.to(dev)).float()
                    if normalize_embeddings:
                        vectors = F.normalize(vectors, dim=-1)
                    out[torch.from_numpy(index)] = vectors.cpu()
                    progress.update(len(index))
        finally:
            self.train(was_training)
        if show_progress_bar:
            progress.close()
        result = out if convert_to_tensor else out.numpy()
        return result[0] if single else result


def load_student_folder(path: str | Path, option: str = "--model") -> Student:
    """A student folder given as a command's `option`, or a one-line error naming the option and the folder."""
    try:
        return Student.from_pretrained(path)
    except UserError as exc:
        raise UserError(f"{option} {exc}") from None
