"""Task registry: GLUE files parse with their counts (the tiny fixture's; the real folder's as SOURCES.md counts
them, where ../shared is beside the checkout); own TSV/CSV/JSONL tasks; metrics; inputs; --data-dir / TC_GLUE_DIR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.metrics import compute_metrics, decode
from finetune.task_data import load_inputs, load_split
from finetune.tasks import GLUE_DIR_ENV, TASKS, TaskSpec, resolve_data_dir, resolve_task
from teacher_cache.base.errors import UserError
from tests.glue_fixtures import FIXTURE_COUNTS, UNLABELLED_TEST_ROWS, real_glue_dir

REAL = real_glue_dir()
# The tiny fixture everywhere; the real GLUE folder too where a development checkout has ../shared beside it.
SOURCES = ["fixture", *(["real"] if REAL is not None else [])]

# Rows and label counts per split, as /work/shared/data/SOURCES.md gives them (label index order = spec.labels).
EXPECTED = {
    "sst2": {"train": (67_349, [29_780, 37_569]), "dev": (872, [428, 444])},
    "mrpc": {"train": (3_668, [1_194, 2_474]), "dev": (408, [129, 279]), "test": (1_725, [578, 1_147])},
    "rte": {"train": (2_490, [1_249, 1_241]), "dev": (277, [146, 131])},
    "cola": {"train": (8_551, [2_528, 6_023]), "dev": (1_043, [322, 721])},
    "stsb": {"train": (5_749, None), "dev": (1_500, None), "test": (1_379, None)},
}
COUNTS = {"fixture": FIXTURE_COUNTS, "real": EXPECTED}
# Each folder's first rows and sizes where the files are odd: MRPC's BOM, CoLA's headerless dev without a final
# newline, STS-B test's gold from the STS Benchmark csv (the fixture's are the bundled STS Benchmark's first rows).
QUIRKS = {
    "real": {"mrpc": ("Amrozi accused his brother", "Referring to him"),
             "cola": ("The sailors rode the breeze clear of the rocks.", 1_043), "cola_test": 1_063},
    "fixture": {"mrpc": ('"She was crying and scared', '"She was crying and she was really scared'),
                "cola": ("Our neighbour did watched the river.", FIXTURE_COUNTS["cola"]["dev"][0]),
                "cola_test": UNLABELLED_TEST_ROWS["CoLA"]},
}


@pytest.fixture
def folder(request, tiny_glue_dir):
    """The GLUE folder a test's `source` parameter names."""
    return tiny_glue_dir if request.node.callspec.params["source"] == "fixture" else REAL


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("source", SOURCES)
def test_glue_files_parse_with_their_counts(source, name, folder):
    spec = TASKS[name]
    data_dir = resolve_data_dir(spec, folder)
    assert set(COUNTS[source][name]) == {"train", *spec.evals}
    for split, (rows, counts) in COUNTS[source][name].items():
        data = load_split(spec, split, data_dir)
        assert len(data) == rows, (name, split)
        assert all(t.strip() for t in data.texts)
        assert (data.pairs is not None) == spec.pair
        if counts is None:
            assert data.labels.dtype == np.float32 and 0 <= data.labels.min() and data.labels.max() <= 5
        else:
            assert np.bincount(data.labels, minlength=len(counts)).tolist() == counts, (name, split)


@pytest.mark.parametrize("source", SOURCES)
def test_quirks_of_the_files(source, folder):
    quirks = QUIRKS[source]
    assert (folder / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    mrpc = load_split(TASKS["mrpc"], "train", folder, max_rows=1)  # BOM before `Quality`
    assert mrpc.texts[0].startswith(quirks["mrpc"][0]) and mrpc.pairs[0].startswith(quirks["mrpc"][1])
    assert not (folder / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    cola = load_split(TASKS["cola"], "dev", folder)  # no header, no newline at the end
    assert cola.texts[0] == quirks["cola"][0]
    assert cola.lines[-1] == quirks["cola"][1]
    stsb = load_split(TASKS["stsb"], "test", folder, max_rows=2)  # STS Benchmark csv: tab-separated
    assert stsb.texts[0] == "A girl is styling her hair." and stsb.labels.tolist() == pytest.approx([2.5, 3.6])
    sst = load_split(TASKS["sst2"], "train", folder, max_rows=5)
    assert len(sst) == 5 and sst.lines[0] == 2


@pytest.mark.parametrize("source", SOURCES)
def test_prediction_inputs_in_each_layout(source, folder, tmp_path):
    test = load_inputs(TASKS["cola"], folder / "CoLA" / "test.tsv")  # header `index sentence`, no labels
    assert len(test) == QUIRKS[source]["cola_test"] and test.labels is None
    dev = load_inputs(TASKS["cola"], folder / "CoLA" / "dev.tsv")  # CoLA's own headerless layout, labelled
    assert len(dev) == QUIRKS[source]["cola"][1] and dev.labels is not None
    assert load_inputs(TASKS["mrpc"], folder / "MRPC" / "test.tsv").labels is None
    assert load_inputs(TASKS["stsb"], folder / "STS-B" / "test.tsv").pairs is not None
    plain = tmp_path / "pairs.txt"
    plain.write_text("A man sings.\tA man is singing.\nDogs run.\tCats sleep.\n")
    data = load_inputs(TASKS["rte"], plain)
    assert data.pairs == ["A man is singing.", "Cats sleep."] and data.labels is None


def test_data_dir_is_the_flag_else_tc_glue_dir(tiny_glue_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    with pytest.raises(UserError, match=r"^--data-dir: required \(or set TC_GLUE_DIR\)$"):
        resolve_data_dir(TASKS["sst2"], None)
    monkeypatch.setenv(GLUE_DIR_ENV, str(tiny_glue_dir))
    assert resolve_data_dir(TASKS["sst2"], None) == tiny_glue_dir
    with pytest.raises(UserError, match="^--data-dir .*: no such folder"):  # the flag wins over the variable
        resolve_data_dir(TASKS["sst2"], tmp_path / "nope")
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(UserError, match="^TC_GLUE_DIR .*nope: no such folder"):
        resolve_data_dir(TASKS["sst2"], None)
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match="^TC_GLUE_DIR .*: no SST-2/train.tsv for task sst2"):
        resolve_data_dir(TASKS["sst2"], None)


def test_own_tasks_in_tsv_csv_jsonl(tmp_path):
    rows = [("good film", "pos"), ('he said "no", twice', "neg"), ("fine", "pos")]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f'"{t.replace(chr(34), 2 * chr(34))}",{lab}\n'
                                                              for t, lab in rows))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    for name in ("t.tsv", "t.csv", "t.jsonl"):
        spec = resolve_task(str(tmp_path / name), ["text"], "label")
        assert spec.labels == ("neg", "pos") and not spec.pair and spec.name == "custom:t"
        data = load_split(spec, "train", resolve_data_dir(spec, None))
        assert data.texts[1] == 'he said "no", twice' and data.labels.tolist() == [1, 0, 1]
        assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(UserError, match="--text-columns"):
        resolve_task(str(tmp_path / "t.tsv"), None, "label")


def test_unknown_task_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        resolve_task("mnli")
    with pytest.raises(UserError, match="no SST-2/train.tsv"):
        resolve_data_dir(TASKS["sst2"], tmp_path)


def test_metrics_on_known_values():
    spec = TASKS["mrpc"]
    gold = np.array([1, 1, 0, 0, 1])
    logits = np.eye(2)[[1, 0, 0, 1, 1]]  # tp 2, fn 1, tn 1, fp 1
    assert compute_metrics(spec, logits, gold) == {"f1": pytest.approx(2 / 3, abs=1e-6), "accuracy": 0.6}
    mcc = compute_metrics(TASKS["cola"], logits, gold)["matthews"]
    assert mcc == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2), abs=1e-6)
    scores = compute_metrics(TASKS["stsb"], np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 3.0, 2.0]))
    assert scores["spearman"] == pytest.approx(0.5) and -1 <= scores["pearson"] <= 1
    assert decode(TASKS["rte"], np.eye(2)[[0, 1]]) == ["entailment", "not_entailment"]
    assert decode(TASKS["stsb"], np.array([[3.14159]])) == ["3.1416"]
