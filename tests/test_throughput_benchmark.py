"""benchmarks/train_throughput.py: the grid of runs it builds, and one small end-to-end run.

No timing here: the figures are the benchmark's job.
"""

from __future__ import annotations

import argparse
import json

import pytest
from bench_loader import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("train_throughput.py") as module:
        yield module


def namespace(**overrides) -> argparse.Namespace:
    args = {
        "settings": ["custom"],
        "env": "breakout",
        "envs": None,
        "precisions": ["float32"],
        "batch_sizes": [131072],
        "minibatch_size": 0,
        "num_envs": None,
        "hidden_sizes": None,
        "compile": None,
        "overlap": ["off"],
        "torch_threads": [0],
        "processes": [1],
        "backends": ["auto"],
    }
    args.update(overrides)
    return argparse.Namespace(**args)


def flag(overrides: list[str], name: str) -> str | None:
    """The last value given for `name` (the one load_config keeps), or None."""
    values = [overrides[i + 1] for i, word in enumerate(overrides[:-1]) if word == name]
    return values[-1] if values else None


def test_backends_set_env_backend_except_auto(bench):
    specs = bench.settings(namespace(settings=["cnn"], env="gym:ALE/Pong-v5", backends=["auto", "envpool"]))
    assert [flag(s["overrides"], "--env.backend") for s in specs] == [None, "envpool"]


def test_the_grid_covers_every_combination(bench):
    args = namespace(
        envs=["breakout", "cartpole"],
        precisions=["float32", "bfloat16"],
        batch_sizes=[131072, 262144],
        hidden_sizes=[64, 256],
        compile=["off", "on"],
    )
    specs = bench.settings(args)
    assert len(specs) == 2 * 2 * 2 * 2 * 2
    seen = {
        (
            s["env"],
            flag(s["overrides"], "--train.precision"),
            flag(s["overrides"], "--train.batch-size"),
            flag(s["overrides"], "--policy.hidden-size"),
            flag(s["overrides"], "--train.compile"),
        )
        for s in specs
    }
    assert len(seen) == len(specs)
    assert {key[4] for key in seen} == {"true", "false"}
    # The minibatch defaults to batch / 8.
    for s in specs:
        batch = int(flag(s["overrides"], "--train.batch-size"))
        assert int(flag(s["overrides"], "--train.minibatch-size")) == batch // 8


def test_lstm128_scales_its_batch_with_the_envs_and_keeps_the_config_compile(bench):
    args = namespace(settings=["lstm128"], num_envs=[1024, 8192], minibatch_size=65536)
    specs = bench.settings(args)
    geometry = [
        (flag(s["overrides"], "--env.num-envs"), flag(s["overrides"], "--train.batch-size")) for s in specs
    ]
    assert geometry == [("1024", "262144"), ("8192", "524288")]
    for s in specs:
        assert flag(s["overrides"], "--policy.hidden-size") == "128"
        assert flag(s["overrides"], "--train.minibatch-size") == "65536"
        # Without --compile the config's own train.compile stays.
        assert flag(s["overrides"], "--train.compile") is None


def test_a_small_run_writes_its_figures(bench, tmp_path):
    out = tmp_path / "tp.json"
    argv = [
        "--env", "cartpole", "--num-envs", "64", "--batch-sizes", "4096", "--minibatch-size", "1024",
        "--epochs", "2", "--precisions", "float32", "--compile", "off", "--out", str(out),
        "--", "--train.torch-threads", "1",
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["env"] == "cartpole" and row["num_envs"] == 64 and row["batch_size"] == 4096
    assert row["compile"] is False and row["device"] == "cpu"
    assert len(row["epochs"]) == 2 and row["undisturbed"]["sps"] > 0


def test_a_two_process_run_splits_the_job_and_reports_rank_0(bench, tmp_path):
    out = tmp_path / "tp.json"
    argv = [
        "--env", "cartpole", "--num-envs", "64", "--batch-sizes", "4096", "--minibatch-size", "1024",
        "--epochs", "2", "--precisions", "float32", "--compile", "off", "--processes", "2",
        "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    # The row describes the job (64 envs, batch 4096), run as 2 processes of 1 torch thread.
    assert row["processes"] == 2 and row["num_envs"] == 64 and row["batch_size"] == 4096
    assert row["torch_threads"] == 1
    assert [m["world_size"] for m in row["epochs"]] == [2, 2]
    assert [m["agent_steps"] for m in row["epochs"]] == [4096, 8192]
    assert row["undisturbed"]["sps"] > 0


def test_the_cnn_setting_draws_native_games_in_pixels_and_leaves_atari_ids_alone(bench):
    envs = ["breakout", "gym:ALE/Pong-v5"]
    args = namespace(settings=["cnn"], envs=envs, precisions=["float32", "bfloat16"])
    specs = bench.settings(args)
    assert [(s["env"], s["precision"]) for s in specs] == [
        ("breakout", "float32"), ("breakout", "bfloat16"),
        ("gym:ALE/Pong-v5", "float32"), ("gym:ALE/Pong-v5", "bfloat16"),
    ]  # fmt: skip
    for spec in specs:
        pixels = flag(spec["overrides"], "--env.options.obs")
        assert pixels == ("pixels" if spec["env"] == "breakout" else None)
        assert flag(spec["overrides"], "--train.precision") == spec["precision"]
