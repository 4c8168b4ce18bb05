"""Data-parallel training launched with torchrun (2 CPU processes, gloo), end to end."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shoal.train.distributed import TORCHRUN_VARS, Dist, _buckets, digest_check, torchrun_world

ROOT = Path(__file__).resolve().parent.parent
# cartpole's config: 512 steps per rank and epoch, so 2 ranks take 4 epochs of 1024 steps.
TOTAL_STEPS = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    # A torchrun around pytest must not leak into the job started here.
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "shoal",
        "train",
        *args,
        "--quiet",
        "--train.torch-threads",
        "1",
        "--train.deterministic",
        "true",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def digest(state: dict[str, torch.Tensor]) -> str:
    """The model digest the trainer records per rank, computed here independently."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_processes_train_in_sync_and_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = torchrun(
        "cartpole",
        "--train.total-steps",
        str(TOTAL_STEPS),
        "--run.dir",
        str(runs),
        "--run.name",
        "dp",
        "--policy.obs-norm",
        "true",
    )
    # Only rank 0 writes: one run folder, one summary.
    assert [p.name for p in runs.iterdir()] == ["dp"]
    run = runs / "dp"
    files = sorted(p.name for p in run.iterdir())
    assert files == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.pt"]
    assert result.stdout.count("done:") == 1
    lines = metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    # total_steps counts both ranks' steps; each epoch both ranks collect a 512-step batch.
    assert [m["agent_steps"] for m in lines] == [1024, 2048, 3072, 4096]
    assert all(m["world_size"] == 2 for m in lines)

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    model = torch.load(run / "model.pt", weights_only=True)["model"]
    assert ckpt["world_size"] == 2
    # Both ranks ended with rank 0's saved parameters and observation statistics.
    assert ckpt["rank_digests"] == [digest(model)] * 2
    # The statistics merged both ranks' observations, not just rank 0's.
    assert float(model["encoder.obs_count"]) == TOTAL_STEPS
    # The ranks sampled differently (their own seeds), so their RNG states differ.
    rng0, rng1 = (r["torch"] for r in ckpt["rng_ranks"])
    assert not torch.equal(rng0, rng1)

    torchrun("--resume", str(run), "--train.total-steps", str(TOTAL_STEPS + 2048))
    lines = metrics(run)
    assert [m["agent_steps"] for m in lines] == [1024, 2048, 3072, 4096, 5120, 6144]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    model = torch.load(run / "model.pt", weights_only=True)["model"]
    assert ckpt["rank_digests"] == [digest(model)] * 2
    assert float(model["encoder.obs_count"]) == TOTAL_STEPS + 2048


def test_torchrun_world_needs_all_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "h")):
        monkeypatch.setenv(key, value)
    assert torchrun_world() == (2, 1, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_world() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR")
    assert torchrun_world() is None


def test_single_process_dist_is_inert() -> None:
    dist = Dist()
    assert not dist.enabled and dist.is_main and dist.rank_seed(7) == 7
    assert Dist(world_size=2, rank=1).rank_seed(7) != 7
    assert dist.sum_floats([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    assert dist.broadcast_object("x") == "x"


def test_buckets_keep_order_and_limit() -> None:
    tensors = [torch.zeros(3), torch.zeros(4), torch.zeros(2, dtype=torch.float64), torch.zeros(10)]
    groups = _buckets(tensors, 8)
    assert [[t.numel() for t in g] for g in groups] == [[3, 4], [2], [10]]
    assert digest_check(["a", "a"]) is None
    assert "rank 1" in (digest_check(["a", "b"]) or "")


# ---- train.processes: `shoal train` starts the ranks itself and splits the job between them ----


def shoal_train(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    command = [sys.executable, "-m", "shoal", "train", *args, "--quiet"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_processes_split_the_job_and_keep_its_config(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = shoal_train(
        "cartpole",
        "--train.processes", "2",
        "--train.total-steps", "2048",
        "--train.deterministic", "true",
        "--run.dir", str(runs),
        "--run.name", "split",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # torchrun's banner about OMP_NUM_THREADS is not shown: the launcher sets the variable.
    assert "OMP_NUM_THREADS" not in result.stderr
    assert result.stdout.count("done:") == 1
    run = runs / "split"
    saved = json.loads((run / "config.json").read_text())
    # The folder keeps the job's config, not a rank's share of it.
    assert saved["train"]["processes"] == 2
    assert saved["env"]["num_envs"] == 16 and saved["train"]["batch_size"] == 512
    lines = metrics(run)
    # cartpole's 512-step batch is the whole job's: 256 steps per rank, 512 per epoch.
    assert [m["agent_steps"] for m in lines] == [512, 1024, 1536, 2048]
    assert all(m["world_size"] == 2 for m in lines)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    model = torch.load(run / "model.pt", weights_only=True)["model"]
    assert ckpt["config"]["train"]["processes"] == 2
    assert ckpt["rank_digests"] == [digest(model)] * 2


def test_processes_that_do_not_divide_the_job_fail_before_starting(tmp_path: Path) -> None:
    result = shoal_train("cartpole", "--train.processes", "3", "--run.dir", str(tmp_path))
    assert result.returncode == 2
    assert "env.num_envs (16) must be a multiple of train.processes (3)" in result.stderr
    assert "torch.distributed" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_split_config_divides_the_job() -> None:
    from shoal.core.config import ConfigError, load_config
    from shoal.train.launch import split_config
    from shoal.train.threads import available_cores

    cfg = load_config("breakout", ["--train.processes", "2"])
    local = split_config(cfg, 2)
    assert local is not cfg and cfg.env.num_envs == 1024
    assert (local.env.num_envs, local.train.batch_size) == (512, cfg.train.batch_size // 2)
    assert (local.train.minibatch_size, local.train.max_minibatch_size) == (8192, 16384)
    assert local.train.total_steps == cfg.train.total_steps
    # The env's automatic threads become this process's share of the cores.
    assert local.env.num_threads == max(1, available_cores() // 2) and cfg.env.num_threads == 0
    single = load_config("breakout", [])
    # train.processes = 1 under torchrun: every process takes the whole sizes, as before.
    assert split_config(single, 4) is single
    with pytest.raises(ConfigError, match="4 process"):
        split_config(cfg, 4)
    with pytest.raises(ConfigError, match="'shoal train' starts them"):
        split_config(cfg, 1)
    with pytest.raises(ConfigError, match="train.minibatch_size .* multiple of train.processes"):
        odd = ["--train.processes", "2", "--train.minibatch-size", "16385"]
        split_config(load_config("breakout", odd), 2)
    with pytest.raises(ConfigError, match=">= 1"):
        split_config(load_config("breakout", ["--train.processes", "0"]), 1)


def test_train_called_directly_with_processes_says_how_to_run_them(tmp_path: Path) -> None:
    from shoal.core.config import ConfigError, load_config
    from shoal.train import train

    cfg = load_config("cartpole", ["--train.processes", "2", "--run.dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="'shoal train' starts them"):
        train(cfg)


def test_an_error_in_the_processes_ends_the_job_with_its_status_and_message(tmp_path: Path) -> None:
    # Divisible by 2, but each process's 500 steps are no whole number of its 8 envs' steps.
    result = shoal_train(
        "cartpole",
        "--train.processes", "2",
        "--train.batch-size", "1000",
        "--train.minibatch-size", "500",
        "--train.max-minibatch-size", "500",
        "--run.dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "train.batch_size (500) must be a multiple" in result.stderr
    assert "each process's share of the job: train.processes = 2" in result.stderr
    # The ranks' own messages, not the launcher's traceback.
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert not any(tmp_path.iterdir())
