"""tc probe and tc eval: figures equal a brute-force numpy computation; reports and plots written; bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.probe import ProbeConfig, run_probe
from student import Student, StudentConfig
from teacher_cache import open_cache
from teacher_cache.base.lock import FolderLock
from tests.helpers import error_lines, run_cli


@pytest.fixture(scope="module")
def tiny_student(tiny_cache, tmp_path_factory):
    """An untrained static student with the cache's vocabulary and width (32)."""
    import torch

    torch.manual_seed(0)
    cache = open_cache(tiny_cache)
    student = Student.from_tokenizer_dir(StudentConfig(arch="static", emb_dim=16, out_dim=cache.dim),
                                         cache.tokenizer_path)
    folder = tmp_path_factory.mktemp("student") / "s"
    student.save_pretrained(folder)
    return folder


def brute_force(cache_dir, student_dir, queries: int, k: int, seed: int):
    """The probe's figures from scratch: plain numpy, the same row sample and query split."""
    cache = open_cache(cache_dir)
    n = len(cache)
    rng = np.random.default_rng(seed)
    ids = np.arange(n)  # max_rows >= rows: every row, no sampling
    teacher = cache.vectors("mean", ids)
    student = Student.from_pretrained(student_dir).encode(cache.texts(ids))
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    student /= np.linalg.norm(student, axis=1, keepdims=True)
    is_query = np.zeros(n, bool)
    is_query[rng.choice(n, queries, replace=False)] = True
    q, db = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    t_top = np.argsort(-(teacher[q] @ teacher[db].T), axis=1)
    s_top = np.argsort(-(student[q] @ student[db].T), axis=1)
    agreement = np.mean([len(set(t_top[i, :k]) & set(s_top[i, :k])) / k for i in range(len(q))])
    recall50 = np.mean([len(set(t_top[i, :k]) & set(s_top[i, :50])) / k for i in range(len(q))])
    cosine = float((teacher * student).sum(1).mean())
    return agreement, recall50, cosine


def test_probe_figures_equal_brute_force(tiny_cache, tiny_student, tmp_path):
    cfg = ProbeConfig(shards=tiny_cache, student=tiny_student, k=5, queries=40, report=tmp_path / "probe",
                      quiet=True, seed=1, max_rows=None)
    report = run_probe(cfg)
    agreement, recall50, cosine = brute_force(tiny_cache, tiny_student, 40, 5, 1)
    assert report["knn@5_agreement"] == pytest.approx(agreement, abs=1e-9)
    assert report["recall_in_student_topk"]["50"] == pytest.approx(recall50, abs=1e-9)
    assert report["mean_cosine_student_teacher"] == pytest.approx(cosine, abs=1e-5)
    for name in ("report.json", "report.md", "agreement_hist.png", "similarity_scatter.png",
                 "agreement_by_length.png"):
        assert (tmp_path / "probe" / name).stat().st_size > 100
    assert json.loads((tmp_path / "probe" / "report.json").read_text())["rows_probed"] == 300
    md = (tmp_path / "probe" / "report.md").read_text()
    assert "kNN@5 agreement" in md and "## Worst queries" in md


def test_exact_search_and_auto_index_choice():
    from pipeline.neighbours import APPROX_FROM_QUERIES, build_index, exact_search, normalize

    rng = np.random.default_rng(0)
    db, q = normalize(rng.normal(size=(1000, 16))), normalize(rng.normal(size=(37, 16)))
    want = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :7]
    sims, ids = exact_search(db, q, 7)
    assert (ids == want).all()
    assert np.allclose(sims, np.take_along_axis(q @ db.T, want, 1), atol=1e-5)
    assert exact_search(db[:3], q, 7)[1].shape == (37, 3)  # k capped at the rows there are
    assert build_index(db, "auto", n_queries=1000).kind == "flat"
    approx = build_index(db, "auto", k=7, n_queries=APPROX_FROM_QUERIES)
    assert approx.kind == "hnsw" and approx.recall >= 0.95


def test_probe_cli_with_user_query_and_approximate_index(tiny_cache, tiny_student, tmp_path, capsys, teacher_dir):
    code = run_cli(capsys, "probe", "--shards", tiny_cache, "--student", tiny_student, "--queries", "30",
                   "--report", tmp_path / "p", "--index", "hnsw", "--query", "A sentence about music.",
                   "--teacher", teacher_dir, "--quiet")[0]
    assert code == 0
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["index"]["kind"] == "hnsw" and report["index"]["recall_vs_exact"] >= 0.95
    assert report["index"]["recall_depth"] == min(100, report["rows_probed"] - 30)  # tuned at the depth searched
    assert len(report["user_queries"][0]["teacher_neighbours"]) == 5
    code = run_cli(capsys, "probe", "--shards", tiny_cache, "--student", tiny_student, "--queries", "30",
                   "--report", tmp_path / "q", "--query", "Only the student side.", "--teacher-free", "--quiet")[0]
    assert code == 0
    assert json.loads((tmp_path / "q" / "report.json").read_text())["user_queries"][0]["teacher_neighbours"] is None


def test_probe_bad_inputs_are_one_line(tiny_cache, tiny_student, tmp_path, capsys):
    other = tmp_path / "wide"
    Student.from_tokenizer_dir(StudentConfig(arch="static", emb_dim=8, out_dim=48),
                               open_cache(tiny_cache).tokenizer_path).save_pretrained(other)
    cases = [
        (["--student", other], "48-d"),
        (["--student", tiny_student, "--k", "1000"], "--k 1000"),
        (["--student", tiny_student, "--query", " "], "--query"),
        (["--student", tiny_student, "--queries", "300"], "--queries"),
        (["--student", tmp_path], "--student " + str(tmp_path) + ": not a student folder (no config.json"),
        (["--student", tiny_cache], "a teacher cache, not a student folder"),
        (["--student", tiny_student, "--index", "lsh"], "--index"),
    ]
    for extra, needle in cases:
        code, _, err = run_cli(capsys, "probe", "--shards", tiny_cache, "--report", tmp_path / "r", "--quiet",
                               *extra)
        lines = error_lines(err)
        assert code != 0 and len(lines) == 1 and needle in lines[0], (extra, err)
    assert not (tmp_path / "r").exists()  # the refused runs left no report folder behind
    with FolderLock(tmp_path / "busy", "tc probe", "--report"):  # another probe writing there now
        code, _, err = run_cli(capsys, "probe", "--shards", tiny_cache, "--report", tmp_path / "busy", "--quiet",
                               "--student", tiny_student)
    assert code != 0 and f"--report {tmp_path / 'busy'}: in use by pid {os.getpid()}" in error_lines(err)[0], err
    assert not (tmp_path / "busy").exists()  # nothing written there: the lock's folder went with the lock


def test_probe_refuses_a_cache_without_texts(tiny_cache, tiny_student, tmp_path, capsys):
    import shutil

    import pyarrow as pa

    copy = tmp_path / "notext"
    shutil.copytree(tiny_cache, copy)
    for path in copy.glob("shard-*.arrow"):
        table = pa.ipc.open_file(str(path)).read_all().drop_columns(["text"])
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    code, _, err = run_cli(capsys, "probe", "--shards", copy, "--student", tiny_student, "--quiet")
    assert code != 0 and "no texts" in error_lines(err)[0]


def test_eval_student_and_teacher_side_by_side(tiny_student, teacher_dir, capsys):
    code, out, err = run_cli(capsys, "eval", "--student", tiny_student, "--teacher", teacher_dir,
                             "--tasks", "sts-b-dev")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "| model | STS-B dev |" and len(lines) == 4
    score = float(lines[2].split("|")[2])
    assert -100 <= score <= 100


def test_eval_reads_senteval_layout(tmp_path, tiny_student, capsys):
    folder = tmp_path / "senteval" / "STS12-en-test"
    folder.mkdir(parents=True)
    pairs = ["A man plays a guitar.\tA man is playing guitar.", "A dog runs.\tThe stock market fell.",
             "Kids play football.\tChildren are playing soccer.", "It is raining.\tThe sun is out."]
    (folder / "STS.input.test.txt").write_text("\n".join(pairs) + "\n")
    (folder / "STS.gs.test.txt").write_text("4.8\n0.2\n4.0\n\n")
    (tmp_path / "senteval" / "SICK_test_annotated.txt").write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        + "".join(f"{i}\t{p}\t{s}\tNEUTRAL\n"
                  for i, (p, s) in enumerate(zip(pairs, ["4.8", "1", "4", "2"], strict=True))))
    code, out, err = run_cli(capsys, "eval", "--student", tiny_student, "--tasks", "sts12,sick-r",
                             "--data-dir", tmp_path / "senteval")
    assert code == 0, err
    assert "| STS12 | sick-r |" in out.splitlines()[0].replace("model | ", "")


def test_eval_bad_inputs(tiny_student, tmp_path, capsys):
    for args, needle in [(["--tasks", "glue"], "--tasks glue"), (["--tasks", "sts12"], "--data-dir"),
                         (["--data-dir", tmp_path / "none"], "--data-dir")]:
        code, _, err = run_cli(capsys, "eval", "--student", tiny_student, *args)
        assert code != 0 and needle in error_lines(err)[0], err
    code, _, err = run_cli(capsys, "eval")
    assert code != 0 and "--student" in error_lines(err)[0]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    for folder, needle in [(tmp_path / "bert", "has no student 'arch'"), (tmp_path / "nowhere", "no such folder")]:
        code, _, err = run_cli(capsys, "eval", "--student", folder, "--tasks", "sts-b")
        lines = error_lines(err)
        assert code != 0 and len(lines) == 1 and f"--student {folder}: " in lines[0] and needle in lines[0], err


def test_real_teacher_sts_b_test_matches_reference(capsys):
    """The bundled teacher on bundled STS-B test: within 0.5 of sentence-transformers' 82.03."""
    from sentence_transformers import SentenceTransformer

    from pipeline.sts import load_task, sts_spearman
    from tests.conftest import real_teacher_path

    pairs = load_task("sts-b")
    assert len(pairs.gold) == 1379
    code, out, _ = run_cli(capsys, "eval", "--teacher", "default", "--tasks", "sts-b")
    ours = float(out.strip().splitlines()[2].split("|")[2])
    reference = sts_spearman(SentenceTransformer(real_teacher_path(), device="cpu").encode, pairs)
    assert abs(ours - reference) < 0.5


def test_demo_runs_end_to_end_on_a_small_slice(tmp_path, capsys):
    """tc demo with the real teacher on 300 bundled sentences and a static student: every step, one table."""
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--max-rows", "300", "--epochs", "1",
                             "--arch", "static", "--quiet")
    assert code == 0, err
    assert "| STS-B test Spearman x100 | 82." in out
    assert "kNN@10 agreement" in out and "sentences/s on this machine" in out
    for path in ("cache/manifest.json", "student/model.safetensors", "probe/report.md", "summary.md"):
        assert (tmp_path / "demo" / path).exists()


def test_neighbour_similarity_spearman_is_unbiased_and_matches_brute_force():
    from scipy.stats import spearmanr

    from pipeline.probe import neighbour_metrics

    rng = np.random.default_rng(0)
    db, queries = rng.normal(size=(2000, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    unrelated_db, unrelated_q = rng.normal(size=(2000, 16)).astype(np.float32), rng.normal(size=(20, 16))
    top = np.argsort(-(queries @ db.T), axis=1)[:, :100]  # brute-force teacher top-100
    same = neighbour_metrics(db, db, queries, queries, top, top, k=10, seed=3)
    assert np.allclose(same["spearman"], 1.0)
    s_top = np.argsort(-(unrelated_q @ unrelated_db.T), axis=1)[:, :100]
    unrelated = neighbour_metrics(db, unrelated_db, queries, unrelated_q, top, s_top, k=10, seed=3)
    # an unrelated student scores near 0 (the old union-of-top-k pairs made it clearly negative by construction)
    assert abs(float(np.mean(unrelated["spearman"]))) < 0.1
    pick = np.random.default_rng(3)
    for q in range(len(queries)):
        pairs = np.union1d(top[q], pick.choice(len(db), 100, replace=False))
        expected = spearmanr(db[pairs] @ queries[q], unrelated_db[pairs] @ unrelated_q[q]).statistic
        assert unrelated["spearman"][q] == pytest.approx(expected)
