"""tc train-student --nproc 2: torchrun + DDP on CPU (gloo): disjoint covering rows, as good as one process, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.data import StreamingCacheDataset
from student.training.train import TrainConfig, train
from student.training.val_rows import validation_ids
from teacher_cache import open_cache
from tests.helpers import error_lines, run_cli

# batch 8 per rank x 2 ranks = the 1-process run's batch 16; 135 training rows per rank -> 17 steps per epoch
TINY = ("--recipe", "paper-512", "--emb-dim", "16", "--hidden", "16", "--epochs", "2", "--lr", "1e-2",
        "--val-rows", "30", "--checkpoint-every", "0", "--eval-every", "7", "--quiet")
STEPS_PER_EPOCH = 17
HOOKS = Path(__file__).resolve().parent / "hooks"


def ddp_args(cache, out, *extra):
    return ["train-student", "--shards", str(cache), "--out", str(out), *TINY, "--batch-size", "8", "--nproc", "2",
            *extra]


@pytest.fixture(scope="module")
def ddp_run(tiny_cache, tmp_path_factory):
    """One 2-rank run of 2 epochs, each rank writing the ids it trained on (tests/hooks: TC_DDP_TRACE_IDS)."""
    folder = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
        mp.setenv("TC_DDP_TRACE_IDS", str(folder / "ids"))
        mp.setenv("OMP_NUM_THREADS", "1")
        from pipeline.cli import main

        assert main(ddp_args(tiny_cache, folder / "student")) == 0
    return folder


def traced(folder, rank) -> list[list[int]]:
    """The batches of ids one rank trained on, in order."""
    return [[int(x) for x in line.split()] for line in (folder / "ids" / f"rank-{rank}.txt").read_text().splitlines()]


def test_ranks_see_disjoint_rows_covering_the_training_rows(ddp_run):
    training = set(range(300)) - set(validation_ids(300, 30).tolist())
    batches = [traced(ddp_run, r) for r in (0, 1)]
    assert [len(b) for b in batches] == [2 * STEPS_PER_EPOCH] * 2  # lockstep: the same number of steps
    for epoch in range(2):
        part = [[i for b in batches[r][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH] for i in b]
                for r in (0, 1)]
        assert len(part[0]) == len(part[1]) == 135
        assert not set(part[0]) & set(part[1])
        assert set(part[0]) | set(part[1]) == training and len(part[0] + part[1]) == 270
    first_epoch = [i for b in batches[0][:STEPS_PER_EPOCH] for i in b]
    assert first_epoch != [i for b in batches[0][STEPS_PER_EPOCH:] for i in b]  # reshuffled each epoch
    args = json.loads((ddp_run / "student" / "training_args.json").read_text())
    assert args["world_size"] == 2 and args["sparse_embeddings_used"]  # sparse embedding grads all-reduced by gloo
    assert not (ddp_run / "student" / "checkpoint").exists()


def test_two_ranks_train_as_well_as_one(ddp_run, tiny_cache, tmp_path):
    two = json.loads((ddp_run / "student" / "metrics.json").read_text())
    one = train(TrainConfig(shards=str(tiny_cache), out=str(tmp_path / "one"), emb_dim=16, hidden=16, epochs=2,
                            lr=1e-2, val_rows=30, checkpoint_every=0, eval_every=7, quiet=True, batch_size=16,
                            recipe="paper-512"))
    assert two["steps"] == one["steps"] == 2 * STEPS_PER_EPOCH and two["rows_seen"] == one["rows_seen"] == 540
    assert two["final"]["val_mse"] < 0.5 * two["initial"]["val_mse"]
    assert two["final"]["val_mse"] == pytest.approx(one["final"]["val_mse"], rel=0.2)
    assert abs(two["final"]["val_cosine"] - one["final"]["val_cosine"]) < 0.01


def test_resume_on_as_many_processes_equals_uninterrupted(ddp_run, tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "part"
    assert run_cli(capsys, *ddp_args(tiny_cache, out, "--max-steps", "11"))[0] == 0
    assert (out / "checkpoint" / "checkpoint.pt").exists() and not (out / "model.safetensors").exists()
    code, _, err = run_cli(capsys, *ddp_args(tiny_cache, out, "--resume"))
    assert code == 0, err
    whole, resumed = load_file(ddp_run / "student" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-6, rtol=1e-5)


def test_a_checkpoint_of_two_ranks_resumes_on_three_without_repeating_a_row(tiny_cache, tmp_path, capsys,
                                                                            monkeypatch):
    """Elastic resume: the rows the 2 ranks trained on before the checkpoint are left out, the rest of the epoch
    is split afresh between 3 ranks; no row is trained on twice in the epoch, and none is missed beyond what the
    3 ranks' lockstep drops (at most one short batch per rank, as in any run)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "elastic"
    monkeypatch.setenv("TC_DDP_TRACE_IDS", str(tmp_path / "before" / "ids"))
    assert run_cli(capsys, *ddp_args(tiny_cache, out, "--max-steps", "5", "--epochs", "1"))[0] == 0
    monkeypatch.setenv("TC_DDP_TRACE_IDS", str(tmp_path / "after" / "ids"))
    code, _, err = run_cli(capsys, *ddp_args(tiny_cache, out, "--resume", "--epochs", "1", "--nproc", "3"))
    assert code == 0, err
    before = [i for r in (0, 1) for b in traced(tmp_path / "before", r) for i in b]
    after = [i for r in (0, 1, 2) for b in traced(tmp_path / "after", r) for i in b]
    assert len(before) == 2 * 5 * 8
    training = set(range(300)) - set(validation_ids(300, 30).tolist())
    seen = before + after
    assert len(seen) == len(set(seen))  # no row twice
    assert set(seen) <= training and len(training - set(seen)) < 3 * 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows_seen"] == len(seen)
    # and back to one process at an epoch boundary: any checkpoint taken there resumes anywhere
    code, _, err = run_cli(capsys, *ddp_args(tiny_cache, tmp_path / "one", "--max-steps", "3"))
    assert code == 0, err


def test_an_error_on_the_ranks_is_one_line(tiny_cache, tmp_path, capfd):
    """The ranks write to the terminal directly (capfd), rank 0 alone; torchrun adds nothing."""
    code, _, err = run_cli(capfd, *ddp_args(tiny_cache, tmp_path / "s", "--val-rows", "1000"))
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == ["error: --val-rows 1000: leaves no training rows (using 300 rows of the cache)"]
    assert err.strip().count("\n") == 0, err
    code, _, err = run_cli(capfd, *ddp_args(tiny_cache, tmp_path / "s", "--epochs", "0"))  # caught before launch
    assert code == 1 and error_lines(err) == ["error: --epochs 0: must be at least 1"]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("world_size,workers", [(3, 0), (2, 2), (5, 0)])
def test_rank_streams_are_disjoint_and_cover_every_epoch(tiny_cache, world_size, workers):
    """Row ranges even with more ranks than shards (5 > 3), and with DataLoader workers inside each rank."""
    cache = open_cache(tiny_cache)
    tokenizer = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"], 64)
    val = validation_ids(300, 30)
    seen = []
    for rank in range(world_size):
        dataset = StreamingCacheDataset(tiny_cache, "embedding", tokenizer, 8, seed=1, val_ids=val, buffer_size=16,
                                        pool_batches=2, rank=rank, world_size=world_size)
        dataset.set_epoch(1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
        ids = [i for batch in loader for i in batch.ids.tolist()]
        assert abs(len(ids) - 270 / world_size) < 1
        assert dataset.steps_per_epoch(1, workers) <= dataset.batches_per_epoch(1, workers)
        seen.append(ids)
    flat = np.concatenate(seen)
    assert len(flat) == len(set(flat.tolist())) == 270
    assert set(flat.tolist()) == set(range(300)) - set(val.tolist())


SPARSE_PROBE = '''
import os
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Embedding(50, 4, sparse=True), torch.nn.Flatten(), torch.nn.Linear(12, 1))
optimizer = torch.optim.SparseAdam(list(model[0].parameters()), lr=0.1)
ddp = DistributedDataParallel(model)  # keep a reference: its reducer does the all-reduce during backward
ddp(torch.tensor([[1, 2, 3]]) + 3 * dist.get_rank()).sum().backward()
rows = sorted(model[0].weight.grad.coalesce().indices()[0].tolist())
optimizer.step()
weights = [torch.zeros(50, 4) for _ in range(2)]
dist.all_gather(weights, model[0].weight.detach().clone())
assert rows == [1, 2, 3, 4, 5, 6], rows  # each rank holds both ranks' rows: the sparse gradient was all-reduced
assert torch.equal(weights[0], weights[1])
dist.destroy_process_group()
os._exit(0)  # as `tc` ranks do: gloo may abort in interpreter teardown (see student.training.distributed.exit_now)
'''


def test_gloo_all_reduces_sparse_embedding_gradients(tmp_path):
    """Why DDP on CPU may keep the sparse embedding (and SparseAdam): the ranks' embeddings stay identical."""
    script = tmp_path / "probe.py"
    script.write_text(SPARSE_PROBE)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
