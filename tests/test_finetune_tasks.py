"""Task registry: the real GLUE files parse as SOURCES.md counts them; own TSV/CSV/JSONL tasks; metrics; inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.metrics import compute_metrics, decode
from finetune.task_data import load_inputs, load_split
from finetune.tasks import DEFAULT_DATA_DIR, TASKS, TaskSpec, resolve_data_dir, resolve_task
from teacher_cache.errors import UserError

needs_glue = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="no ../shared/data/glue next to the repo")

# Rows and label counts per split, as /work/shared/data/SOURCES.md gives them (label index order = spec.labels).
EXPECTED = {
    "sst2": {"train": (67_349, [29_780, 37_569]), "dev": (872, [428, 444])},
    "mrpc": {"train": (3_668, [1_194, 2_474]), "dev": (408, [129, 279]), "test": (1_725, [578, 1_147])},
    "rte": {"train": (2_490, [1_249, 1_241]), "dev": (277, [146, 131])},
    "cola": {"train": (8_551, [2_528, 6_023]), "dev": (1_043, [322, 721])},
    "stsb": {"train": (5_749, None), "dev": (1_500, None), "test": (1_379, None)},
}


@needs_glue
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_glue_files_parse_with_the_published_counts(name):
    spec = TASKS[name]
    data_dir = resolve_data_dir(spec, None)
    for split, (rows, counts) in EXPECTED[name].items():
        data = load_split(spec, split, data_dir)
        assert len(data) == rows, (name, split)
        assert all(t.strip() for t in data.texts)
        assert (data.pairs is not None) == spec.pair
        if counts is None:
            assert data.labels.dtype == np.float32 and 0 <= data.labels.min() and data.labels.max() <= 5
        else:
            assert np.bincount(data.labels, minlength=len(counts)).tolist() == counts, (name, split)


@needs_glue
def test_quirks_of_the_real_files():
    data_dir = resolve_data_dir(TASKS["mrpc"], None)
    mrpc = load_split(TASKS["mrpc"], "train", data_dir, max_rows=1)  # BOM before `Quality`
    assert mrpc.texts[0].startswith("Amrozi accused his brother") and mrpc.pairs[0].startswith("Referring to him")
    cola = load_split(TASKS["cola"], "dev", data_dir)  # no header, no newline at the end
    assert cola.texts[0] == "The sailors rode the breeze clear of the rocks."
    assert cola.lines[-1] == 1043
    stsb = load_split(TASKS["stsb"], "test", data_dir, max_rows=2)  # STS Benchmark csv: tab-separated
    assert stsb.texts[0] == "A girl is styling her hair." and stsb.labels.tolist() == pytest.approx([2.5, 3.6])
    sst = load_split(TASKS["sst2"], "train", data_dir, max_rows=5)
    assert len(sst) == 5 and sst.lines[0] == 2


@needs_glue
def test_prediction_inputs_in_each_layout(tmp_path):
    glue = DEFAULT_DATA_DIR
    test = load_inputs(TASKS["cola"], glue / "CoLA" / "test.tsv")  # header `index sentence`, no labels
    assert len(test) == 1063 and test.labels is None
    dev = load_inputs(TASKS["cola"], glue / "CoLA" / "dev.tsv")  # CoLA's own headerless layout, labelled
    assert len(dev) == 1043 and dev.labels is not None
    assert load_inputs(TASKS["mrpc"], glue / "MRPC" / "test.tsv").labels is None
    assert load_inputs(TASKS["stsb"], glue / "STS-B" / "test.tsv").pairs is not None
    plain = tmp_path / "pairs.txt"
    plain.write_text("A man sings.\tA man is singing.\nDogs run.\tCats sleep.\n")
    data = load_inputs(TASKS["rte"], plain)
    assert data.pairs == ["A man is singing.", "Cats sleep."] and data.labels is None


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
