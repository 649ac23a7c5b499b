"""Student encoders: encode() shape, order and batch-size invariance, save/load, teacher-initialised embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from student import Student, StudentConfig
from student.models import init_from_teacher, project_embeddings
from teacher_cache import open_cache
from teacher_cache.base.errors import UserError


def tiny_student(cache_dir, arch: str = "bilstm", **kw) -> Student:
    """A random tiny student sharing the cache's tokenizer."""
    cache = open_cache(cache_dir)
    torch.manual_seed(0)
    cfg = StudentConfig(arch=arch, vocab_size=30522, emb_dim=16, hidden=16, out_dim=cache.dim, max_length=64, **kw)
    return Student.from_tokenizer_dir(cfg, cache.tokenizer_path)


@pytest.fixture(scope="module")
def sentences(tiny_cache) -> list[str]:
    texts = open_cache(tiny_cache).texts(np.arange(40))
    return texts + ["", "a", "A much longer sentence " * 20]  # empty, one piece, truncated


@pytest.mark.parametrize("arch", ["bilstm", "cnn", "static"])
def test_encode_is_ordered_and_batch_invariant(tiny_cache, sentences, arch):
    student = tiny_student(tiny_cache, arch)
    ref = student.encode(sentences, batch_size=32)
    assert isinstance(ref, np.ndarray) and ref.shape == (len(sentences), 32) and ref.dtype == np.float32
    for batch_size in (1, 5, 64):
        np.testing.assert_allclose(student.encode(sentences, batch_size=batch_size), ref, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(sentences))
    shuffled = student.encode([sentences[i] for i in perm], batch_size=7)
    np.testing.assert_allclose(shuffled, ref[perm], atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in ref}) > len(sentences) - 3  # distinct sentences, distinct vectors


def test_encode_forms(tiny_cache, sentences):
    student = tiny_student(tiny_cache)
    single = student.encode(sentences[3])
    assert single.shape == (32,)
    np.testing.assert_allclose(single, student.encode(sentences)[3], atol=1e-5)
    unit = student.encode(sentences[:5], normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    tensor = student.encode(sentences[:5], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (5, 32)
    assert student.encode([]).shape == (0, 32)
    assert student.training  # encode() leaves the train/eval mode as it found it
    with pytest.raises(TypeError):
        student.encode([1, 2])


def test_save_load_round_trip(tiny_cache, sentences, tmp_path):
    student = tiny_student(tiny_cache, "cnn")
    student.save_pretrained(tmp_path / "s")
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    loaded = Student.from_pretrained(tmp_path / "s")
    assert loaded.config == student.config
    np.testing.assert_allclose(loaded.encode(sentences), student.encode(sentences), atol=1e-6)
    loaded.save_pretrained(tmp_path / "s")  # saving onto its own folder works
    np.testing.assert_allclose(Student.from_pretrained(tmp_path / "s").encode(sentences[:3]),
                               student.encode(sentences[:3]), atol=1e-6)


def test_from_pretrained_refuses_non_student(tmp_path):
    with pytest.raises(UserError, match="not a student folder"):
        Student.from_pretrained(tmp_path)


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="--arch"):
        StudentConfig(arch="transformer")
    with pytest.raises(UserError, match="--emb-dim"):
        StudentConfig(emb_dim=0)
    assert StudentConfig(arch="static").pooling == "mean" and StudentConfig().hidden == 512


def test_project_embeddings():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, 8)) @ np.diag([5, 4, 3, 2, 1, 0.1, 0.1, 0.1])
    narrow = project_embeddings(matrix, 4)
    assert narrow.shape == (500, 4) and abs(float(narrow.std()) - 1) < 1e-4
    explained = np.linalg.norm(narrow.numpy() @ np.linalg.pinv(narrow.numpy()) @ (matrix - matrix.mean(0)))
    assert explained / np.linalg.norm(matrix - matrix.mean(0)) > 0.95  # the leading components are kept
    same = project_embeddings(matrix, 8).numpy()
    centred = matrix - matrix.mean(0)
    np.testing.assert_allclose(same, centred / centred.std(ddof=1), rtol=1e-4, atol=1e-5)
    assert project_embeddings(matrix, 12).shape == (500, 12)


def test_init_from_teacher(tiny_cache):
    student = tiny_student(tiny_cache)
    teacher = open_cache(tiny_cache).token_embeddings()
    init_from_teacher(student.encoder, teacher)
    weight = student.encoder.embedding.weight.detach().numpy()
    np.testing.assert_allclose(weight, project_embeddings(teacher, 16).numpy(), atol=1e-6)


def test_loading_needs_neither_cache_nor_teacher_code(tiny_cache, tmp_path):
    import subprocess
    import sys

    tiny_student(tiny_cache, "static").save_pretrained(tmp_path / "s")
    code = ("import sys; from student import Student; v = Student.from_pretrained(sys.argv[1]).encode(['a b', 'c']); "
            "assert v.shape == (2, 32); bad = {'transformers', 'teacher_cache.encode'}; "
            "assert not bad & set(sys.modules), bad & set(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr


def test_dense_bilstm_passes_equal_packed_sequences():
    from student.models import BiLSTMEncoder, length_mask

    torch.manual_seed(0)
    cfg = StudentConfig(arch="bilstm", vocab_size=50, emb_dim=6, hidden=5, out_dim=4, layers=2, max_length=12)
    encoder = BiLSTMEncoder(cfg).train()  # dropout 0: training mode changes nothing but the kernels' path
    ids, lengths = torch.randint(1, 50, (5, 9)), torch.tensor([9, 3, 1, 7, 9])
    x = encoder.embedding(ids)
    dense, packed = encoder.dense_states(x, lengths), encoder.packed_states(x, lengths)
    real = length_mask(lengths, 9)
    assert torch.allclose(dense[real], packed[real], atol=1e-6)
    dense[real].sum().backward()
    grads = [p.grad.clone() for p in encoder.lstm.parameters()]
    encoder.zero_grad()
    encoder.packed_states(encoder.embedding(ids), lengths)[real].sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, encoder.lstm.parameters(), strict=True))
