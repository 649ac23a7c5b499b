"""Teachers that are not BERT: a tiny random MPNet (all-mpnet-base-v2's architecture and tokenizer) end to end.

MPNet frames a sentence as <s> ... </s> (ids 0 and 2), pads with <pad> (1), takes no token_type_ids and numbers
positions from padding_idx + 1. Its tokenizer is all-mpnet-base-v2's, rebuilt offline: the uncased BERT
word-pieces of the bundled MiniLM teacher with <s>, <pad>, </s>, <unk> before them and <mask> after (the same
30,527 ids, and the same ids on the sample corpus, as the real tokenizer.json), so no download is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.cli import main as tc
from tests.conftest import SAMPLE, real_teacher_path

MAX_POSITIONS = 66  # positions 2..65: 64 tokens at most
N_TEXTS = 40


def mpnet_vocab() -> dict[str, int]:
    """all-mpnet-base-v2's vocabulary, from the bundled MiniLM's BERT vocab.txt."""
    bert = (Path(real_teacher_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {word: i for i, word in enumerate(["<s>", "<pad>", "</s>", "<unk>", *bert, "<mask>"])}


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 32-wide MPNet saved as a sentence-transformers folder (mean pooling + Normalize)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    folder = tmp_path_factory.mktemp("tiny_mpnet")
    vocab = mpnet_vocab()
    MPNetTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=MAX_POSITIONS, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2)
    MPNetModel(config).eval().save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder


@pytest.fixture(scope="module")
def mpnet_cache(mpnet_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """`tc encode` (the CLI, in-process) of 40 sample sentences and one over-long one with the tiny MPNet."""
    folder = tmp_path_factory.mktemp("mpnet_cache")
    texts = SAMPLE.read_text().splitlines()[:N_TEXTS] + [" ".join(["word"] * 300)]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    # --max-length beyond what the model can read: cut to its 64 usable positions, not 66 (an IndexError)
    code = tc(["encode", "--teacher", str(mpnet_dir), "--corpus", str(corpus), "--out", str(folder / "out"),
               "--max-length", "200", "--precision", "fp32", "--quiet"])
    assert code == 0
    return folder / "out", texts


def test_manifest_follows_the_sentence_transformers_config(mpnet_cache):
    out, texts = mpnet_cache
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == len(texts)
    assert manifest["pooling"] == ["mean"] and manifest["normalize"] is True and manifest["dim"] == 32
    assert manifest["max_length"] == MAX_POSITIONS - 2
    n_tokens = pa.ipc.open_file(str(out / "shard-00000.arrow")).read_all().column("n_tokens").to_numpy()
    assert n_tokens[-1] == MAX_POSITIONS - 2


def test_vectors_equal_sentence_transformers(mpnet_cache, mpnet_dir):
    from sentence_transformers import SentenceTransformer

    out, texts = mpnet_cache
    ours = np.stack(pa.ipc.open_file(str(out / "shard-00000.arrow")).read_all().column("embedding")
                    .to_numpy(zero_copy_only=False))
    reference = SentenceTransformer(str(mpnet_dir), device="cpu").encode(texts, batch_size=16)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_cache_tokenizer_frames_with_s_and_end_s(mpnet_cache):
    from tokenizers import Tokenizer

    out, texts = mpnet_cache
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    ids = tok.encode(texts[0]).ids
    assert ids[0] == 0 and ids[-1] == 2 and tok.token_to_id("<pad>") == 1
    assert tok.get_vocab_size(with_added_tokens=True) == len(mpnet_vocab())


def test_token_outputs_use_s_and_end_s(mpnet_cache, mpnet_dir):
    from safetensors.numpy import load_file
    from transformers import AutoModel

    from teacher_cache.encode.teacher import load_teacher
    from teacher_cache.encode.token_outputs import TOKEN_OUTPUTS_FILE, TOKEN_OUTPUTS_KEY, token_frame_ids

    out, _ = mpnet_cache
    assert token_frame_ids(load_teacher(str(mpnet_dir))) == (0, 2)
    rows = load_file(str(out / TOKEN_OUTPUTS_FILE))[TOKEN_OUTPUTS_KEY]
    assert rows.shape == (len(mpnet_vocab()), 32) and rows.dtype == np.float16 and np.isfinite(rows).all()
    vocab = mpnet_vocab()
    ids = [vocab[w] for w in ("the", "paris", "##ing", "[UNK]")]
    model = AutoModel.from_pretrained(mpnet_dir).eval()
    with torch.inference_mode():
        def framed(start: int, end: int) -> np.ndarray:
            x = torch.tensor([[start, i, end] for i in ids])
            return model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state.mean(1).numpy()

        right, bert_like = framed(0, 2), framed(vocab["[CLS]"], vocab["[SEP]"])
    assert np.allclose(rows[ids].astype(np.float32), right, atol=3e-3)
    assert not np.allclose(rows[ids].astype(np.float32), bert_like, atol=3e-3)


def test_max_position_counts_only_usable_positions(mpnet_dir, teacher_dir):
    from teacher_cache.encode.teacher import load_teacher

    assert load_teacher(str(mpnet_dir)).max_position == MAX_POSITIONS - 2  # RoBERTa-style offset of pad + 1
    assert load_teacher(str(teacher_dir)).max_position == 128  # BERT: every position
