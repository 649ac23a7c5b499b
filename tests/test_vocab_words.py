"""Whole words for static students (#25): `tc vocab` counts the cache's words as the teacher's tokenizer splits them,
runs the split ones through the teacher alone, and writes them into the cache; a student appends them to its
vocabulary, starts their rows from the teacher's outputs, and exports to model2vec and sentence-transformers exactly.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from student import Student
from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.distributed import DistContext
from student.training.init import add_vocab_words, init_embeddings
from student.training.plan import plan_run
from student.training.train_config import TrainConfig
from student.vocab import extend_tokenizer_files, extend_tokenizer_json
from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.cache_files import read_vocab_words
from teacher_cache.encode.word_vocab import VocabConfig, build_vocab, compute_word_outputs
from teacher_cache.manifest import VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE
from teacher_cache.reader import open_cache
from teacher_cache.shards import sha256_file
from tests.conftest import real_teacher_path
from tests.helpers import one_line, run_cli

WORDS = 40
BASE = 30522


def copy_cache(tiny_cache: Path, folder: Path) -> Path:
    """A copy of the session's tiny cache, for a test that writes into it."""
    shutil.copytree(tiny_cache, folder)
    return folder


@pytest.fixture(scope="module")
def vocab_cache(tmp_path_factory, tiny_cache) -> Path:
    """The tiny cache with its 40 most frequent split words (min count 1) added by `tc vocab`."""
    out = copy_cache(tiny_cache, tmp_path_factory.mktemp("vocab") / "cache")
    info = build_vocab(VocabConfig(shards=str(out), words=WORDS, min_count=1, quiet=True))
    assert info["written"] and info["words"] == WORDS
    return out


def cache_words(cache: Path) -> list[str]:
    return (cache / VOCAB_WORDS_FILE).read_text(encoding="utf-8").split("\n")[:-1]


def sentences_with(words: list[str]) -> list[str]:
    """Sentences that hold whole words, a word with a whole word as its prefix, and plain word-pieces."""
    return [f"The {words[0]} and the {words[1]} were seen near Zürich.", f"{words[2].upper()}, {words[3]}!",
            f"{words[4]}s are not {words[5]}", "A man is playing a guitar.", "", "🙂 " + words[6]]


# ---------------------------------------------------------------------------------------------------- tc vocab


def test_words_are_counted_and_split_as_the_teachers_tokenizer_does(vocab_cache, teacher_dir, corpus_file):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(teacher_dir), use_fast=True)
    backend = hf.backend_tokenizer
    counts: Counter = Counter()
    for line in corpus_file.read_text(encoding="utf-8").splitlines():
        counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(line)))
    split = [(n, w) for w, n in counts.items() if len(hf.tokenize(w)) >= 2]
    want = [w for _, w in sorted(split, key=lambda nw: (-nw[0], nw[1]))[:WORDS]]
    assert cache_words(vocab_cache) == want
    info = json.loads((vocab_cache / "manifest.json").read_text())["extra"]["vocab_words"]
    assert info["split_words"] == len(split) and info["word_occurrences"] == sum(counts.values())
    assert info["coverage"] == pytest.approx(sum(counts[w] for w in want) / sum(counts.values()), abs=1e-6)


def test_word_outputs_are_the_teacher_run_on_the_word_alone(vocab_cache, teacher_dir):
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    stored = load_file(str(vocab_cache / VOCAB_WORDS_OUTPUTS_FILE))["word_outputs"]
    assert stored.dtype == np.float16 and stored.shape == (WORDS, 32)
    hf = AutoTokenizer.from_pretrained(str(teacher_dir), use_fast=True)
    model = AutoModel.from_pretrained(str(teacher_dir)).eval()
    words = cache_words(vocab_cache)
    for i in (0, 7, WORDS - 1):
        inputs = hf(words[i], return_tensors="pt")  # [CLS] pieces... [SEP]
        assert inputs["input_ids"].shape[1] >= 4
        with torch.no_grad():
            want = model(**inputs).last_hidden_state.mean(dim=1)[0].numpy()
        np.testing.assert_allclose(stored[i].astype(np.float32), want, rtol=0, atol=2e-3)  # float16 rounding


def test_batching_words_by_length_never_changes_their_outputs(vocab_cache, teacher_dir):
    from teacher_cache.encode.teacher import load_teacher

    teacher = load_teacher(str(teacher_dir))
    tokenizer = teacher.tokenizer.backend_tokenizer
    pieces = [[t.id for t in tokenizer.model.tokenize(w)] for w in cache_words(vocab_cache)]
    one = compute_word_outputs(teacher, pieces, batch_size=1, quiet=True)
    many = compute_word_outputs(teacher, pieces, batch_size=512, quiet=True)
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)
    assert len({len(p) for p in pieces}) > 1  # several lengths, so several batches even at 512


def test_the_cache_still_verifies_and_a_rerun_does_nothing(vocab_cache, capsys):
    manifest = json.loads((vocab_cache / "manifest.json").read_text())
    for name in (VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE):
        assert manifest["files"][name]["sha256"] == sha256_file(vocab_cache / name)
    code, out, err = run_cli(capsys, "verify", vocab_cache)
    assert code == 0 and out.startswith("ok:"), err
    before = {n: (vocab_cache / n).stat().st_mtime_ns for n in (VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE)}
    code, _, err = run_cli(capsys, "vocab", "--shards", vocab_cache, "--words", WORDS, "--min-count", 1)
    assert code == 0 and "nothing to do" in err, err
    assert {n: (vocab_cache / n).stat().st_mtime_ns for n in before} == before


def test_other_settings_replace_the_words(tiny_cache, tmp_path, capsys):
    cache = copy_cache(tiny_cache, tmp_path / "cache")
    code, _, err = run_cli(capsys, "vocab", "--shards", cache, "--words", 10, "--min-count", 1)
    assert code == 0 and "10 whole words" in err and "rows/s" in err, err
    first = cache_words(cache)
    code, _, err = run_cli(capsys, "vocab", "--shards", cache, "--words", 25, "--min-count", 1, "--quiet")
    assert code == 0, err
    assert len(cache_words(cache)) == 25 and cache_words(cache)[:10] == first
    words, outputs = read_vocab_words(cache)
    assert words == cache_words(cache) and outputs.shape == (25, 32)
    assert run_cli(capsys, "verify", cache)[0] == 0


def test_bad_input_is_one_line(tiny_cache, tmp_path, capsys):
    cache = copy_cache(tiny_cache, tmp_path / "cache")
    one_line(*run_cli(capsys, "vocab", "--shards", "s3://bucket/cache")[::2], "--shards s3://bucket/cache",
             "tc vocab needs a local cache")
    one_line(*run_cli(capsys, "vocab", "--shards", tmp_path / "none")[::2], str(tmp_path / "none"))
    one_line(*run_cli(capsys, "vocab", "--shards", cache, "--words", 0)[::2], "--words 0")
    one_line(*run_cli(capsys, "vocab", "--shards", cache, "--min-count", 100_000, "--quiet")[::2],
             "--min-count 100000", "lower --min-count")
    one_line(*run_cli(capsys, "vocab", "--shards", cache, "--teacher", real_teacher_path())[::2],
             "not the teacher that made")
    assert not (cache / VOCAB_WORDS_FILE).exists() and run_cli(capsys, "verify", cache)[0] == 0


# -------------------------------------------------------------------------------------------- the student side


def test_the_extended_tokenizer_gives_the_same_ids_everywhere(vocab_cache, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    words = cache_words(vocab_cache)
    files = extend_tokenizer_files(read_tokenizer_files(vocab_cache / "tokenizer"), words)
    texts = sentences_with(words)
    ours = WordPieceTokenizer(files["tokenizer.json"], 64, add_special_tokens=True)
    assert ours.vocab_size == BASE + WORDS
    exported = Tokenizer.from_str(files["tokenizer.json"].decode())
    exported.no_padding()  # the teacher's saved file pads to its max length; the ids are what is compared
    assert ours.ids(texts) == [e.ids or [ours.pad_id] for e in exported.encode_batch(texts)]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.ids(texts[:4]) == hf(texts[:4])["input_ids"]
    longer = next(i for i, w in enumerate(words) if w + "s" not in words)
    ids = ours.ids([words[0], f"{words[longer]}s"])
    assert ids[0] == [101, BASE, 102]  # the whole word: one id
    assert ids[1] == [101, BASE + longer, exported.token_to_id("##s"), 102]  # a longer word starts with it
    assert ours.ids(["A man is playing a guitar."]) == WordPieceTokenizer(
        read_tokenizer_files(vocab_cache / "tokenizer")["tokenizer.json"], 64).ids(["A man is playing a guitar."])
    assert "vocab.txt" not in files  # the cache's tokenizer/ (transformers 5) has none; the teacher's own folder has
    with_txt = extend_tokenizer_files(read_tokenizer_files(real_teacher_path()), words)
    lines = with_txt["vocab.txt"].decode().split("\n")
    assert len(lines) == BASE + WORDS + 1 and lines[BASE:-1] == words


def test_extension_refuses_words_made_for_another_vocabulary(vocab_cache):
    tokenizer_json = read_tokenizer_files(vocab_cache / "tokenizer")["tokenizer.json"]
    with pytest.raises(UserError, match="'guitar' is in the vocabulary already"):
        extend_tokenizer_json(tokenizer_json, ["epilepsy", "guitar"])
    bpe = json.loads(tokenizer_json)
    bpe["model"]["type"] = "BPE"
    with pytest.raises(UserError, match="a BPE tokenizer"):
        extend_tokenizer_json(json.dumps(bpe), ["epilepsy"])


def planned_student(cache: Path, words: int | None, how: str = "outputs", **knobs) -> tuple[Student, object]:
    """A static student planned on `cache` as train.py plans it, with --vocab-words `words`, initialised `how`."""
    cfg = TrainConfig(shards=str(cache), out="unused", arch="static", init_embeddings=how, **knobs)
    opened = open_cache(cache)
    plan = add_vocab_words(plan_run(cfg, opened, DistContext()), opened, words)
    torch.manual_seed(0)
    student = Student(plan.student, plan.tokenizer_files)
    init_embeddings(student, opened, cfg.init_embeddings, cfg.sif, plan.n_rows)
    return student.eval(), opened


def test_word_rows_start_from_the_word_outputs(vocab_cache):
    student, cache = planned_student(vocab_cache, WORDS, emb_dim=32, sif=0.0, token_weights=False)
    assert student.config.vocab_size == BASE + WORDS
    words, word_outputs = read_vocab_words(vocab_cache)
    rows = np.concatenate([cache.token_outputs(), word_outputs])
    centred = rows - rows.mean(axis=0)  # emb_dim = the teacher's dim: the PCA keeps every direction
    got = student.encode(words[:5] + ["guitar"])
    guitar = student.tokenizer.tokenizer.token_to_id("guitar")  # a token of the teacher's, for comparison
    want = centred[[BASE, BASE + 1, BASE + 2, BASE + 3, BASE + 4, guitar]]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_with_teacher_embeddings_a_word_starts_at_the_mean_of_its_pieces(vocab_cache):
    student, cache = planned_student(vocab_cache, WORDS, "teacher", emb_dim=32)
    table = student.encoder.embedding.weight.detach().numpy()
    base = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"], 64,
                              add_special_tokens=False)
    for i, pieces in enumerate(base.ids(cache_words(vocab_cache)[:5])):
        assert len(pieces) >= 2
        np.testing.assert_allclose(table[BASE + i], table[pieces].mean(axis=0), rtol=0, atol=1e-5)


def test_sif_weights_count_the_words_with_the_extended_tokenizer(vocab_cache):
    student, _ = planned_student(vocab_cache, WORDS, emb_dim=16, token_weights=True)
    weights = student.encoder.token_weights.weight[:, 0].detach().numpy()
    assert (weights[BASE:] < 1.0).all()  # every word is seen in the texts as its own id
    plain, _ = planned_student(vocab_cache, None, emb_dim=16, token_weights=True)
    assert plain.config.vocab_size == BASE


def test_vocab_words_without_the_files_is_one_line(tiny_cache, vocab_cache):
    cfg = TrainConfig(shards=str(tiny_cache), out="unused", arch="static")
    cache = open_cache(tiny_cache)
    with pytest.raises(CacheError, match=r"--vocab-words 10: .* carries no whole words; run `tc vocab"):
        add_vocab_words(plan_run(cfg, cache, DistContext()), cache, 10)
    many, _ = planned_student(vocab_cache, WORDS * 10, emb_dim=16)  # fewer there: all of them, with a warning
    assert many.config.vocab_size == BASE + WORDS


def test_a_student_with_words_trains_and_exports_the_same_vectors(vocab_cache, tmp_path, capsys, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    model2vec = pytest.importorskip("model2vec")
    code, _, err = run_cli(capsys, "train-student", "--shards", vocab_cache, "--out", tmp_path / "s", "--arch",
                           "static", "--token-weights", "--emb-dim", "16", "--epochs", "1", "--batch-size", "16",
                           "--val-rows", "30", "--quiet", "--vocab-words", str(WORDS))
    assert code == 0, err
    student = Student.from_pretrained(tmp_path / "s")
    words = cache_words(vocab_cache)
    assert student.config.vocab_size == BASE + WORDS
    assert student.tokenizer.ids([words[0]]) == [[BASE]]
    texts = [t for t in sentences_with(words) if t]  # the empty sentence is zeros in model2vec
    want = student.encode(texts)
    known = [i for i, t in enumerate(texts) if "🙂" not in t]  # sentence-transformers averages [UNK] in as zeros
    got = st.SentenceTransformer(str(tmp_path / "s"), device="cpu", local_files_only=True).encode(
        [texts[i] for i in known])
    np.testing.assert_allclose(got, want[known], rtol=0, atol=1e-5)
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "s", "--to", "model2vec", "--out", tmp_path / "m")
    assert code == 0, err
    m2v = model2vec.StaticModel.from_pretrained(tmp_path / "m")
    assert m2v.tokenizer.get_vocab_size() == BASE + WORDS
    np.testing.assert_allclose(m2v.encode(texts, use_multiprocessing=False), want, rtol=0, atol=1e-5)


def test_vocab_help_has_an_example(capsys):
    code, out, _ = run_cli(capsys, "vocab", "--help")
    assert code == 0 and "Example: tc vocab --shards" in out and "--min-count" in out
