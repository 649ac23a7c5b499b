"""A student where its users deploy: sentence-transformers, model2vec, ONNX (OnnxStudent), quantised weights, the
fast static encode path, the cache read by Hugging Face datasets, and the bundled data shipped in the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch

from student import Student, StudentConfig
from tests.conftest import ROOT, real_teacher_path
from tests.helpers import run_cli

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon in late September.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates.",
    "Café owners in Zürich said the new rules were confusing 🙂 but fair.",
    "hello",
    "word " * 80,  # longer than max_length 64: truncated
    "Two dogs run across a snowy field.",
]
EDGE = ["", "🙂 🙂"]  # empty, and only [UNK]: one pad token for the student (model2vec returns zeros for these)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def make_student(arch: str, folder: Path, **overrides) -> Student:
    """A tiny random student with the real uncased vocabulary, saved to `folder`; static ones get token weights."""
    torch.manual_seed(0)
    fields = dict(arch=arch, emb_dim=16, out_dim=24, max_length=64)
    if arch != "static":
        fields["hidden"] = 16
    else:
        fields["token_weights"] = True
    fields.update(overrides)
    student = Student.from_tokenizer_dir(StudentConfig(**fields), real_teacher_path()).eval()
    if student.config.token_weights:
        with torch.no_grad():
            student.encoder.token_weights.weight.uniform_(0.2, 2.0)
            student.encoder.proj.bias.normal_()
    for name, param in student.encoder.named_parameters():  # no all-zero layer left to hide a wrong export
        if name.endswith("bias") and not param.any():
            with torch.no_grad():
                param.normal_()
    student.save_pretrained(folder)
    return student


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------- static fast path


def test_static_fast_path_equals_padded_forward_and_ignores_batching(tmp_path):
    student = make_student("static", tmp_path / "s")
    texts = TEXTS + EDGE
    fast = student.encode(texts, batch_size=3)
    ids, lengths = student.tokenizer(texts)
    with torch.no_grad():
        padded = student(ids, lengths).numpy()
    np.testing.assert_allclose(fast, padded, rtol=0, atol=1e-6)  # the same sums, in another float order
    assert np.array_equal(student.encode(texts[::-1], batch_size=1)[::-1], fast)
    single = student.encode(texts[0])
    assert single.shape == (24,)
    np.testing.assert_allclose(single, fast[0], rtol=0, atol=1e-6)  # a 1-row matmul rounds differently


def test_static_students_tokenise_as_model2vec(tmp_path):
    student = make_student("static", tmp_path / "s")
    assert student.config.add_special_tokens is False
    unk = student.tokenizer.unk_id
    ids = student.tokenizer.ids(["Café 🙂 rules", "🙂", ""])
    assert all(unk not in row for row in ids)
    assert ids[1] == [student.tokenizer.pad_id] and ids[2] == [student.tokenizer.pad_id]
    bilstm = make_student("bilstm", tmp_path / "b")
    assert unk in bilstm.tokenizer.ids(["Café 🙂 rules"])[0]  # the others keep [UNK], and [CLS]/[SEP]


# ------------------------------------------------------------------------------------------ sentence-transformers


@pytest.mark.parametrize("arch", ["static", "bilstm", "cnn"])
def test_student_folder_loads_in_sentence_transformers(arch, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    student = make_student(arch, tmp_path / "s")
    modules = json.loads((tmp_path / "s" / "modules.json").read_text())
    if arch == "static":  # sentence-transformers' own module: no flag needed
        assert modules == [{"idx": 0, "name": "0", "path": "0_StaticEmbedding",
                            "type": "sentence_transformers.models.StaticEmbedding"}]
        model = st.SentenceTransformer(str(tmp_path / "s"), device="cpu", local_files_only=True)
        texts = TEXTS  # EDGE: the empty and all-[UNK] sentences are zeros there (as in model2vec)
    else:
        assert modules == [{"idx": 0, "name": "0", "path": "", "type": "student.st_module.StudentSentenceEncoder"}]
        model = st.SentenceTransformer(str(tmp_path / "s"), device="cpu", trust_remote_code=True,
                                       local_files_only=True)
        texts = TEXTS + EDGE
    got = model.encode(texts, batch_size=4)
    want = student.encode(texts)
    assert cosines(got, want).min() > 0.9999
    normalized = model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(normalized, student.encode(texts, normalize_embeddings=True), atol=1e-5)
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    assert dimension() == 24
    model.save(str(tmp_path / "resaved"))
    if arch == "static":  # saved by sentence-transformers, a sentence-transformers static model
        again = st.SentenceTransformer(str(tmp_path / "resaved"), device="cpu", local_files_only=True)
        assert cosines(again.encode(texts), want).min() > 0.9999
    else:  # saved by sentence-transformers, it is a student folder again
        again = Student.from_pretrained(tmp_path / "resaved")
        np.testing.assert_array_equal(again.encode(texts), want)


@pytest.mark.parametrize("arch", ["static", "cnn"])
def test_sentence_transformers_fine_tunes_the_student(arch, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    make_student(arch, tmp_path / "s")
    model = st.SentenceTransformer(str(tmp_path / "s"), device="cpu", trust_remote_code=arch != "static",
                                   local_files_only=True)
    before = model.encode(TEXTS[:2])
    features = model.tokenize(TEXTS[:2])
    loss = model(features)["sentence_embedding"].pow(2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert not np.allclose(model.encode(TEXTS[:2]), before)


# ----------------------------------------------------------------------------------------------------- model2vec


def test_model2vec_export_gives_the_same_vectors(tmp_path, capsys):
    model2vec = pytest.importorskip("model2vec")
    student = make_student("static", tmp_path / "s")
    code, out, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "model2vec", "--out", tmp_path / "m")
    assert code == 0, err
    assert "model2vec (float32)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "s"]  # no temporary folder left
    m2v = model2vec.StaticModel.from_pretrained(tmp_path / "m")
    assert m2v.normalize is False and m2v.max_length == 64
    got = m2v.encode(TEXTS, use_multiprocessing=False)
    want = student.encode(TEXTS)
    assert cosines(got, want).min() > 0.9999
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # exact fold: projection, bias and token weights
    np.testing.assert_allclose(m2v.encode(TEXTS, normalize=True), student.encode(TEXTS, normalize_embeddings=True),
                               atol=1e-5)


@pytest.mark.parametrize("dtype,floor", [("float16", 0.9999), ("int8", 0.999)])
def test_model2vec_quantised_exports_load_in_model2vec(dtype, floor, tmp_path, capsys):
    model2vec = pytest.importorskip("model2vec")
    student = make_student("static", tmp_path / "s")
    assert run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "model2vec", "--out", tmp_path / "f32")[0] == 0
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "model2vec", "--out", tmp_path / dtype,
                           "--dtype", dtype)
    assert code == 0, err
    m2v = model2vec.StaticModel.from_pretrained(tmp_path / dtype)
    assert m2v.embedding.dtype == np.dtype(dtype)
    assert cosines(m2v.encode(TEXTS, use_multiprocessing=False), student.encode(TEXTS)).min() > floor
    size = (tmp_path / dtype / "model.safetensors").stat().st_size
    full = (tmp_path / "f32" / "model.safetensors").stat().st_size
    assert size < full * (0.51 if dtype == "float16" else 0.3)


# ---------------------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("arch,overrides", [("static", {}), ("bilstm", {}), ("cnn", {}),
                                            ("cnn", {"static_path": True, "token_weights": True}),
                                            ("bilstm", {"static_path": True, "token_weights": True})])
def test_onnx_export_matches_the_torch_student(arch, overrides, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from student import OnnxStudent

    student = make_student(arch, tmp_path / "s", **overrides)
    code, out, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "onnx", "--out", tmp_path / "o")
    assert code == 0, err
    assert err == ""  # the exporter's own C++ warnings are kept off the terminal
    onnx_student = OnnxStudent.from_pretrained(tmp_path / "o", threads=1)
    texts = TEXTS + EDGE
    want = student.encode(texts)
    for batch_size in (1, 4, 32):  # dynamic batch and length axes
        got = onnx_student.encode(texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert cosines(got, want).min() > 0.9999
    np.testing.assert_allclose(onnx_student.encode(texts, normalize_embeddings=True),
                               student.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert onnx_student.encode("hello").shape == (24,)
    assert "OnnxStudent.from_pretrained" in (tmp_path / "o" / "README.md").read_text()


@pytest.mark.parametrize("dtype,floor", [("float16", 0.9999), ("int8", 0.99)])
def test_onnx_quantised_exports(dtype, floor, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from student import OnnxStudent

    student = make_student("bilstm", tmp_path / "s")
    assert run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "onnx", "--out", tmp_path / "f32")[0] == 0
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "onnx", "--out", tmp_path / dtype,
                           "--dtype", dtype)
    assert code == 0, err
    got = OnnxStudent.from_pretrained(tmp_path / dtype, threads=1).encode(TEXTS)
    assert cosines(got, student.encode(TEXTS)).min() > floor
    assert (tmp_path / dtype / "model.onnx").stat().st_size < (tmp_path / "f32" / "model.onnx").stat().st_size * 0.6


def test_onnx_student_needs_no_torch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    student = make_student("cnn", tmp_path / "s")
    assert run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "onnx", "--out", tmp_path / "o")[0] == 0
    code = ("import sys, numpy as np; from student import OnnxStudent; "
            "v = OnnxStudent.from_pretrained(sys.argv[1], threads=1).encode(['A sentence.', 'Another one.']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; np.save(sys.argv[2], v)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o"), str(tmp_path / "v.npy")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    want = student.encode(["A sentence.", "Another one."])
    assert cosines(np.load(tmp_path / "v.npy"), want).min() > 0.9999


def test_a_trained_static_student_loads_and_exports_everywhere(tiny_cache, tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers")
    model2vec = pytest.importorskip("model2vec")
    pytest.importorskip("onnxruntime")
    from student import OnnxStudent

    code, _, err = run_cli(capsys, "train-student", "--shards", tiny_cache, "--out", tmp_path / "s", "--arch",
                           "static", "--token-weights", "--emb-dim", "16", "--epochs", "1", "--batch-size", "16",
                           "--val-rows", "30", "--quiet")
    assert code == 0, err
    student = Student.from_pretrained(tmp_path / "s")
    want = student.encode(TEXTS)
    got = st.SentenceTransformer(str(tmp_path / "s"), device="cpu", local_files_only=True).encode(TEXTS)
    assert cosines(got, want).min() > 0.9999
    for to in ("model2vec", "onnx"):
        code, _, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", to, "--out", tmp_path / to)
        assert code == 0, err
    assert cosines(model2vec.StaticModel.from_pretrained(tmp_path / "model2vec").encode(TEXTS), want).min() > 0.9999
    assert cosines(OnnxStudent.from_pretrained(tmp_path / "onnx", threads=1).encode(TEXTS), want).min() > 0.9999
    card = (tmp_path / "s" / "README.md").read_text()
    assert 'SentenceTransformer("' in card and "trust_remote_code" not in card
    assert "OnnxStudent" in card and "StaticModel" in card


# ------------------------------------------------------------------------------------------------- bad input


def test_export_help_has_an_example(capsys):
    code, out, _ = run_cli(capsys, "export", "--help")
    assert code == 0 and "Example: tc export" in out


def test_export_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    make_student("bilstm", tmp_path / "bilstm")
    make_student("static", tmp_path / "static")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())

    def export(*args: str) -> tuple[int, str]:
        code, _, err = run_cli(capsys, "export", *args)
        return code, err

    assert_one_line_error(*export("--model", tmp_path / "empty", "--to", "onnx", "--out", tmp_path / "o"),
                          "not a student folder")
    assert_one_line_error(*export("--model", tmp_path / "bert", "--to", "onnx", "--out", tmp_path / "o"),
                          "not a student folder")
    assert_one_line_error(*export("--model", tmp_path / "nowhere", "--to", "onnx", "--out", tmp_path / "o"),
                          "no such folder")
    assert_one_line_error(*export("--model", tmp_path / "static", "--to", "tflite", "--out", tmp_path / "o"),
                          "--to tflite")
    assert_one_line_error(*export("--model", tmp_path / "static", "--to", "onnx", "--out", tmp_path / "o",
                                  "--dtype", "int4"), "--dtype int4")
    assert_one_line_error(*export("--model", tmp_path / "bilstm", "--to", "model2vec", "--out", tmp_path / "o"),
                          "static students only")
    assert_one_line_error(*export("--model", tmp_path / "static", "--to", "onnx", "--out", tmp_path / "taken"),
                          "--force")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert_one_line_error(*export("--model", tmp_path / "static", "--to", "onnx", "--out", tmp_path / "o"),
                          "pip install 'teacher-cache[onnx]'")
    monkeypatch.setitem(sys.modules, "model2vec", None)
    assert_one_line_error(*export("--model", tmp_path / "static", "--to", "model2vec", "--out", tmp_path / "o"),
                          "pip install 'teacher-cache[model2vec]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_interrupted_export_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import student.export.formats as formats_module
    import student.export.run as export_module

    make_student("cnn", tmp_path / "s")

    def crash(*args, **kwargs):
        (tmp_path / "marker").touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(formats_module, "onnx_weights_to_int8", crash)
    with pytest.raises(KeyboardInterrupt):
        export_module.export_student(tmp_path / "s", "onnx", tmp_path / "o", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker", "s"]
    # --force replaces an earlier export only once the new one is complete
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.txt").write_text("old")
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "onnx", "--out", tmp_path / "o",
                           "--force")
    assert code == 0, err
    assert not (tmp_path / "o" / "old.txt").exists() and (tmp_path / "o" / "model.onnx").exists()


def test_the_card_shows_the_three_ways_to_load():
    from student.training.card import model_card

    args = {"arch": "static", "emb_dim": 16, "pooling": "mean", "target_column": "mean", "loss": "mse", "epochs": 1,
            "batch_size": 8, "lr": 0.01, "init_embeddings": "random", "out": "student_out"}
    card = model_card(args, {"final": {}, "initial": {}}, 123)
    for needle in ("Student.from_pretrained(", "SentenceTransformer(\"student_out\")",
                   "OnnxStudent.from_pretrained(", "tc export --model student_out --to onnx",
                   "StaticModel.from_pretrained("):
        assert needle in card
    cnn_card = model_card({**args, "arch": "cnn", "hidden": 16}, {}, 1)
    assert "StaticModel" not in cnn_card and "SentenceTransformer(\"student_out\", trust_remote_code=True)" in cnn_card


# ------------------------------------------------------------------------------------------- the cache and wheel


def test_hugging_face_datasets_reads_the_shards(tiny_cache, tmp_path):
    datasets = pytest.importorskip("datasets")
    import polars as pl

    from teacher_cache import open_cache

    cache = open_cache(tiny_cache)
    want = np.concatenate([b.vectors for b in cache.iter_batches(batch_size=1000, column="mean")])
    shards = sorted(str(p) for p in tiny_cache.glob("shard-*.arrow"))
    # the README's two ways: load_dataset("arrow") reads the IPC file format as it is ...
    ds = datasets.load_dataset("arrow", data_files=shards, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(cache) and ds.column_names[:2] == ["id", "text"]
    np.testing.assert_array_equal(np.asarray(ds.with_format("numpy")["embedding"]), want)
    # ... and polars hands the shards to Dataset without a copy into the datasets cache
    ds2 = datasets.Dataset.from_polars(pl.scan_ipc(str(tiny_cache / "shard-*.arrow")).collect())
    np.testing.assert_array_equal(np.asarray(ds2.with_format("numpy")["embedding"]), want)
    assert ds2["text"][:5] == ds["text"][:5]


def test_bundled_data_is_found_and_every_file_ships_in_the_wheel():
    from pipeline.sts import BUNDLED_STSB
    from teacher_cache.encode.corpus import DEFAULT_CORPUS

    assert (BUNDLED_STSB / "sts-test.csv").exists() and DEFAULT_CORPUS.exists()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["teacher_cache._data"] == "data"
    patterns = setuptools["package-data"]
    for path in (ROOT / "data").rglob("*"):
        if path.is_file():
            rel = path.relative_to(ROOT / "data")
            package = ".".join(("teacher_cache._data", *rel.parent.parts))
            assert any(fnmatch(rel.name, p) for p in patterns.get(package, [])), f"data/{rel} is not in the wheel"
