"""The student encoders: token ids (batch x time) and lengths in, one vector per sentence out.

Every encoder masks padding itself (embeddings zeroed, pooling over real tokens only), so a sentence's vector
never depends on what else is in its batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from student.config import StudentConfig


def length_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """(batch, time) boolean mask, True on real tokens."""
    return torch.arange(time, device=lengths.device)[None, :] < lengths[:, None]


def masked_pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Max or mean of (batch, time, dim) states over the real time steps."""
    if pooling == "max":
        return states.masked_fill(~mask[..., None], torch.finfo(states.dtype).min).amax(dim=1)
    weights = mask[..., None].to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each (batch, time, dim) sequence reversed within its own length; padding steps stay where they are (the
    map is its own inverse, so it also puts a reverse pass's states back in order)."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = lengths.to(x.device)[:, None] - 1 - steps
    index = torch.where(index >= 0, index, steps)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


def token_weight_table(cfg: StudentConfig) -> nn.Embedding | None:
    """A learnt scalar weight per vocabulary entry, started at one (None unless `cfg.token_weights`)."""
    if not cfg.token_weights:
        return None
    table = nn.Embedding(cfg.vocab_size, 1)
    nn.init.ones_(table.weight)
    return table


def with_static_path(encoder: nn.Module, out: torch.Tensor, emb: torch.Tensor, input_ids: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """`out` plus the encoder's static path, static_proj(mean of w_t e_t), when it has one (cnn, bilstm)."""
    if encoder.static_proj is None:
        return out
    weighted = emb if encoder.token_weights is None else emb * encoder.token_weights(input_ids)
    return out + encoder.static_proj(masked_pool(weighted, mask, "mean"))


class BiLSTMEncoder(nn.Module):
    """Word-piece embedding -> bidirectional LSTM -> pooling over time -> linear.

    The LSTM runs over the dense padded batch, one direction at a time, the reverse one over each sentence reversed
    within its length: the same states as packed sequences at every real step (padding comes after them and is
    pooled away), at the speed of the dense kernels; batches are length-bucketed, so little padding is computed.
    Packed sequences remain for export (the TorchScript/ONNX exporters know them).

    With `cfg.static_path`, as for the CNN, a static student's path runs beside the LSTM and the two are added:
    proj(pooled states) + static_proj(mean of w_t e_t); started from a static student with proj at zero, the
    BiLSTM begins exactly where that static student is and learns what word order adds.
    """

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.hidden, num_layers=cfg.layers, bidirectional=True, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(2 * cfg.hidden, cfg.out_dim)
        self.token_weights = token_weight_table(cfg)
        self.static_proj = nn.Linear(cfg.emb_dim, cfg.out_dim) if cfg.static_path else None

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) ids and (batch,) lengths -> (batch, out_dim)."""
        time = input_ids.shape[1]
        emb = self.embedding(input_ids)
        x = self.dropout(emb)
        exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
        states = self.packed_states(x, lengths) if exporting else self.dense_states(x, lengths)
        mask = length_mask(lengths, time)
        out = self.proj(self.dropout(masked_pool(states, mask, self.cfg.pooling)))
        return with_static_path(self, out, emb, input_ids, mask)

    def packed_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The LSTM's (batch, time, 2 * hidden) states over packed sequences (padding steps zero)."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        return pad_packed_sequence(states, batch_first=True, total_length=x.shape[1])[0]

    def dense_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The same states at every real step, from dense single-direction passes (padding steps arbitrary)."""
        lstm = self.lstm
        for layer in range(lstm.num_layers):
            if layer:
                x = nn.functional.dropout(x, lstm.dropout, self.training)
            forward = self._direction(x, layer, "")
            backward = reverse_within(self._direction(reverse_within(x, lengths), layer, "_reverse"), lengths)
            x = torch.cat([forward, backward], dim=-1)
        return x

    def _direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One direction of one layer of self.lstm (its own weights) over a dense batch, from zero state."""
        weights = [getattr(self.lstm, f"{name}_l{layer}{suffix}")
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        zero = x.new_zeros(1, x.shape[0], self.lstm.hidden_size)
        return torch._VF.lstm(x, (zero, zero), weights, True, 1, 0.0, self.training, False, True)[0]


class CNNEncoder(nn.Module):
    """Word-piece embedding -> parallel 1-D convolutions (odd widths, same length) + ReLU -> pooling -> linear.

    With `cfg.static_path` a static student's path runs beside the convolutions and the two are added:
    proj(pooled convolutions) + static_proj(mean of w_t e_t). Started from a static student's weights with the
    convolution side's projection at zero, it begins exactly where the static student is and adds context.
    """

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.emb_dim, cfg.hidden, k, padding=k // 2) for k in cfg.kernel_sizes)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.hidden * len(cfg.kernel_sizes), cfg.out_dim)
        self.token_weights = token_weight_table(cfg)
        self.static_proj = nn.Linear(cfg.emb_dim, cfg.out_dim) if cfg.static_path else None

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) ids and (batch,) lengths -> (batch, out_dim)."""
        mask = length_mask(lengths, input_ids.shape[1])
        emb = self.embedding(input_ids)
        x = self.dropout(emb) * mask[..., None]  # padding reads as the conv's zero padding
        x = x.transpose(1, 2)
        pooled = [masked_pool(torch.relu(conv(x)).transpose(1, 2), mask, self.cfg.pooling) for conv in self.convs]
        out = self.proj(self.dropout(torch.cat(pooled, dim=-1)))
        return with_static_path(self, out, emb, input_ids, mask)


class StaticEncoder(nn.Module):
    """model2vec-like: the (weighted) mean of token vectors, then a linear map to the teacher's width.

    With `cfg.token_weights` every vocabulary entry also has a learnt scalar weight (initialised from SIF
    frequencies by the trainer): the sentence vector is proj(sum_t w_t e_t / n), which folds exactly into one
    static matrix, row t = proj(w_t e_t), for model2vec.
    """

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.token_weights = token_weight_table(cfg)
        self.proj = nn.Linear(cfg.emb_dim, cfg.out_dim)

    def token_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, time, emb_dim) token vectors, each scaled by its learnt weight when there are weights."""
        x = self.embedding(input_ids)
        return x if self.token_weights is None else x * self.token_weights(input_ids)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) ids and (batch,) lengths -> (batch, out_dim)."""
        mask = length_mask(lengths, input_ids.shape[1])
        return self.proj(masked_pool(self.token_vectors(input_ids), mask, self.cfg.pooling))


ENCODERS: dict[str, type[nn.Module]] = {"bilstm": BiLSTMEncoder, "cnn": CNNEncoder, "static": StaticEncoder}


def build_encoder(cfg: StudentConfig) -> nn.Module:
    """The encoder module for `cfg.arch`, randomly initialised."""
    return ENCODERS[cfg.arch](cfg)


def project_embeddings(matrix: np.ndarray, dim: int) -> torch.Tensor:
    """Teacher token embeddings (vocab x d) -> (vocab x dim): PCA when narrower, copy (+ small noise) otherwise.

    The result is rescaled to unit standard deviation, the scale of nn.Embedding's own random init.
    """
    x = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
    x = x - x.mean(dim=0, keepdim=True)
    if dim < x.shape[1]:
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        out = x @ vh[:dim].T
    else:
        out = torch.randn(x.shape[0], dim) * x.std() * 0.01
        out[:, : x.shape[1]] = x
    return out / out.std().clamp(min=1e-12)


def init_from_teacher(encoder: nn.Module, matrix: np.ndarray) -> None:
    """Overwrite the encoder's embedding with the teacher's token embeddings projected to its width."""
    weight = encoder.embedding.weight
    rows = min(weight.shape[0], matrix.shape[0])
    with torch.no_grad():
        weight[:rows] = project_embeddings(matrix[:rows], weight.shape[1])
