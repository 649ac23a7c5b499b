"""tc encode --engine ray: the same cache as the local path, resumable, a killed worker retried; one-line errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from teacher_cache import open_cache
from teacher_cache.shards import read_shard, vectors_of
from tests.helpers import error_lines, run_cli, shard_digests

HOOKS = Path(__file__).resolve().parent / "hooks"
SHARD = "250"  # 2,000 rows -> 8 shards for 2 workers: completions arrive out of order


@pytest.fixture(scope="module")
def corpus_2k(tmp_path_factory):
    """2,000 real sentences (the acceptance corpus)."""
    from tests.conftest import SAMPLE

    path = tmp_path_factory.mktemp("ray_corpus") / "corpus.txt"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:2000]) + "\n")
    return path


@pytest.fixture(scope="module")
def crash_control(tmp_path_factory):
    """The file the tests/hooks wrapper in each Ray worker reads: '<marker>:<shard>' kills that worker once."""
    return tmp_path_factory.mktemp("ray_hooks") / "crash_once"


@pytest.fixture(scope="module")
def local_ray(crash_control):
    """A local Ray instance with 2 CPUs, shut down after the module; its workers load tests/hooks."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:  # the workers inherit this environment
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
        mp.setenv("TC_RAY_CRASH_ONCE", str(crash_control))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def args(teacher_dir, corpus, out, *extra):
    return ["encode", "--corpus", str(corpus), "--out", str(out), "--teacher", str(teacher_dir), "--pooling",
            "mean,cls", "--max-length", "64", "--precision", "fp32", "--shard-size", SHARD, *extra, "--quiet"]


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory, teacher_dir, corpus_2k):
    """The reference: the same corpus through the local engine."""
    from teacher_cache.encode.run import EncodeConfig, encode_corpus

    out = tmp_path_factory.mktemp("ray_ref") / "local"
    encode_corpus(EncodeConfig(corpus=[str(corpus_2k)], out=out, teacher=str(teacher_dir), pooling=["mean", "cls"],
                               max_length=64, precision="fp32", shard_size=int(SHARD), quiet=True))
    return out


def assert_same_cache(ray_dir, local_dir):
    """Same manifest identity and shard list, same ids/texts/n_tokens, vectors equal to float rounding."""
    a, b = open_cache(ray_dir), open_cache(local_dir)
    assert a.manifest.complete and not a.verify()
    assert a.manifest.identity() == b.manifest.identity()
    strip = ("sha256",)
    assert [{k: v for k, v in vars(s).items() if k not in strip} for s in a.manifest.shards] == \
           [{k: v for k, v in vars(s).items() if k not in strip} for s in b.manifest.shards]
    assert a.manifest.columns == b.manifest.columns and a.manifest.skipped_rows == b.manifest.skipped_rows
    for pa_, pb in zip(a.shard_paths, b.shard_paths, strict=True):
        ta, tb = read_shard(pa_), read_shard(pb)
        assert ta.schema == tb.schema
        for col in ("id", "text", "n_tokens"):
            assert ta.column(col).to_pylist() == tb.column(col).to_pylist()
        for col in ("embedding", "embedding_cls"):
            va, vb = vectors_of(ta, col), vectors_of(tb, col)
            np.testing.assert_allclose(va, vb, atol=1e-5, rtol=1e-5)
            cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
            assert cos.min() > 0.999


def test_ray_cache_equals_local_and_verifies(local_ray, teacher_dir, corpus_2k, local_cache, tmp_path, capsys):
    out = tmp_path / "ray"
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_2k, out, "--engine", "ray", "--workers", "2"))
    assert code == 0, err
    assert_same_cache(out, local_cache)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["last_run"]["engine"] == "ray" and manifest["extra"]["last_run"]["workers"] == 2
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "token_embeddings.safetensors").exists()
    code, out_text, _ = run_cli(capsys, "verify", out)
    assert code == 0 and "ok: 8 shards, 2,000 rows" in out_text
    # one worker per CPU, same precision: here the kernels match and so do the checksums
    print("checksums equal:", shard_digests(out) == shard_digests(local_cache))


def test_rerun_resumes_after_last_complete_shard(local_ray, teacher_dir, corpus_2k, local_cache, tmp_path, capsys):
    out = tmp_path / "ray"
    cmd = args(teacher_dir, corpus_2k, out, "--engine", "ray", "--workers", "2")
    assert run_cli(capsys, *cmd)[0] == 0
    # a driver killed after shard 3: manifest lists shards 0-2 only, incomplete; shard 3 and a partial one remain
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:3], False
    (out / "manifest.json").write_text(json.dumps(manifest))
    for name in ("shard-00004.arrow", "shard-00005.arrow", "shard-00006.arrow", "shard-00007.arrow"):
        (out / name).unlink()
    (out / "shard-00004.arrow.tmp").write_bytes(b"partial")
    kept = {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.arrow"))[:3]}
    code, _, err = run_cli(capsys, *cmd[:-1])
    assert code == 0, err
    assert "resuming after 3 complete shards (750 rows)" in err
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # complete shards were not rewritten
    assert not list(out.glob("*.tmp"))
    assert_same_cache(out, local_cache)
    code, _, err = run_cli(capsys, *cmd[:-1])
    assert code == 0 and "already complete" in err


def test_a_worker_killed_mid_shard_is_retried(local_ray, crash_control, teacher_dir, corpus_2k, local_cache,
                                             tmp_path, capsys):
    """The hook makes a worker process exit at the start of shard 5; Ray restarts it and retries the shard."""
    marker = tmp_path / "crashed"
    crash_control.write_text(f"{marker}:5")  # read by the tests/hooks wrapper in every worker
    out = tmp_path / "ray"
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_2k, out, "--engine", "ray", "--workers", "2"))
    assert code == 0, err
    assert marker.exists()  # the worker did die
    assert_same_cache(out, local_cache)


def test_local_cache_can_be_finished_by_ray(local_ray, teacher_dir, corpus_2k, local_cache, tmp_path, capsys):
    out = tmp_path / "mixed"
    assert run_cli(capsys, *args(teacher_dir, corpus_2k, out, "--max-rows", "2000"))[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:5], False
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_2k, out, "--max-rows", "2000", "--engine", "ray",
                                         "--workers", "2")[:-1])
    assert code == 0, err
    assert "resuming after 5 complete shards" in err
    assert open_cache(out).manifest.complete and not open_cache(out).verify()


def test_without_ray_the_error_says_how_to_install(teacher_dir, corpus_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_file, tmp_path / "o", "--engine", "ray"))
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == ['error: --engine ray: Ray is not installed; install the extra with: '
                                'pip install -e ".[ray]"']
    assert not (tmp_path / "o").exists()  # checked before anything is written


@pytest.mark.parametrize("extra,needle", [
    (("--workers", "2"), "--workers: only with --engine ray"),
    (("--engine", "spark"), "--engine spark: choose local or ray"),
    (("--engine", "ray", "--workers", "0"), "--workers 0: must be at least 1"),
    (("--engine", "ray", "--device", "cuda"), "--gpus-per-worker 1"),
])
def test_bad_engine_flags_are_one_line(teacher_dir, corpus_file, tmp_path, capsys, extra, needle):
    pytest.importorskip("ray")
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_file, tmp_path / "o", *extra))
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and needle in lines[0], err


def test_precision_auto_is_resolved_once_like_the_local_path(local_ray, teacher_dir, corpus_file, tmp_path, capsys):
    """auto: worker 0 calibrates on the first shard as the local path does; every worker then uses that precision."""
    def cmd(out, *extra):
        return ["encode", "--corpus", str(corpus_file), "--out", str(out), "--teacher", str(teacher_dir),
                "--max-length", "64", "--shard-size", "100", *extra]
    assert run_cli(capsys, *cmd(tmp_path / "local", "--quiet"))[0] == 0
    code, _, err = run_cli(capsys, *cmd(tmp_path / "ray", "--engine", "ray", "--workers", "2"))
    assert code == 0, err
    assert "resolved on worker 0, used by every worker" in err
    local, ray_ = open_cache(tmp_path / "local"), open_cache(tmp_path / "ray")
    assert ray_.manifest.precision == local.manifest.precision != "auto"
    a, b = ray_.vectors(), local.vectors()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999


def test_overlapped_workers_write_the_same_cache(local_ray, teacher_dir, corpus_2k, local_cache, tmp_path, capsys,
                                                 monkeypatch):
    """The GPU workers' mode (2 shards per actor at once, one tokenising while the other runs), exercised on CPU."""
    import teacher_cache.encode.ray_engine as ray_encode

    monkeypatch.setattr(ray_encode, "actor_concurrency", lambda device: 2)
    out = tmp_path / "ray"
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_2k, out, "--engine", "ray", "--workers", "1"))
    assert code == 0, err
    assert_same_cache(out, local_cache)


def test_ray_encodes_into_a_bucket(local_ray, teacher_dir, corpus_2k, local_cache, tmp_path, capsys, s3_env):
    """--engine ray with --out s3://: the driver writes through the same CacheWriter, so the bucket holds the
    shards and manifest a local run writes (ids, texts, rows equal; vectors to float rounding)."""
    from teacher_cache.storage import Store

    url = f"s3://{s3_env}/ray-cache"
    code, _, err = run_cli(capsys, *args(teacher_dir, corpus_2k, url, "--engine", "ray", "--workers", "2"))
    assert code == 0, err
    copy = tmp_path / "copy"
    store = Store.open(url)
    for name in store.list():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(store.read_bytes(name))
    assert_same_cache(copy, local_cache)
    assert json.loads(store.read_bytes("manifest.json"))["extra"]["last_run"]["engine"] == "ray"
    code, out_text, err = run_cli(capsys, "verify", url)
    assert code == 0 and "ok: 8 shards, 2,000 rows" in out_text, err
