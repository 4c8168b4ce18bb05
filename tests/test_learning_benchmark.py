"""benchmarks/learning.py's in-run SB3 reference: its stopping rule and its fallback without SB3.

No timing here: the timings themselves are the benchmark's job.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_loader import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("learning.py") as module:
        yield module


def episode(ret: float) -> dict:
    # What SB3's Monitor wrapper puts in a finished episode's info.
    return {"episode": {"r": ret, "l": int(ret), "t": 0.0}}


def test_tracker_stops_at_the_first_step_the_last_100_reach_the_target(bench) -> None:
    tracker = bench.EpisodeTracker(target=475.0)
    steps = 0
    # 150 poor episodes, then good ones, arriving a few per vector step among unfinished envs.
    stream = [100.0] * 150 + [500.0] * 200
    reached_at = None
    for i in range(0, len(stream), 3):
        steps += 8
        infos = [episode(r) for r in stream[i : i + 3]] + [{}] * 5
        if tracker.update(infos, steps, elapsed=steps / 1000) and reached_at is None:
            reached_at = (i + 3, steps)
    # Mean of the last 100 >= 475 first once at most 6 of them are 100s: after 150 + 94 episodes.
    first = next(n for n in range(100, len(stream) + 1) if sum(stream[n - 100 : n]) / 100 >= 475)
    assert first == 244
    assert reached_at is not None and reached_at[0] >= first and reached_at[0] - 3 < first
    assert tracker.steps_to_target == reached_at[1]
    assert tracker.time_to_target == pytest.approx(reached_at[1] / 1000)
    assert tracker.episodes == len(stream) and len(tracker.returns) == 100
    assert tracker.mean() == 500.0  # kept counting; the first crossing stays recorded


def test_tracker_ignores_steps_without_finished_episodes(bench) -> None:
    tracker = bench.EpisodeTracker(target=475.0)
    assert not tracker.update([{}, {"TimeLimit.truncated": False}], 8, 0.1)
    assert math.isnan(tracker.mean()) and tracker.time_to_target is None
    assert not tracker.update([episode(20.0)], 16, 0.2)
    assert tracker.mean() == 20.0


def test_zoo_linear_schedules(bench) -> None:
    lr = bench.zoo_value(bench.SB3_CARTPOLE["learning_rate"])
    clip = bench.zoo_value(bench.SB3_CARTPOLE["clip_range"])
    assert lr(1.0) == pytest.approx(1e-3) and lr(0.25) == pytest.approx(2.5e-4)
    assert clip(1.0) == pytest.approx(0.2) and clip(0.0) == 0.0
    assert bench.zoo_value(0.98) == 0.98


def test_runs_ours_only_with_a_message_when_sb3_is_missing(bench, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(bench, "sb3_available", lambda: False)
    assert bench.main(["cartpole", "--seeds", "0", "--reference", "sb3", "--out", str(tmp_path)]) == 0
    assert "stable-baselines3 is not installed" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cartpole_learning.json").read_text())
    assert "reference" not in summary
    assert (tmp_path / "cartpole_score_vs_time.png").exists()


def test_sb3_reference_is_for_cartpole_only(bench) -> None:
    with pytest.raises(SystemExit):
        bench.main(["breakout", "--seeds", "0", "--reference", "sb3"])


def test_sb3_run_stops_when_the_callback_says_so(bench) -> None:
    pytest.importorskip("stable_baselines3")
    threads = torch.get_num_threads()
    try:
        # A zero wall-time limit: the callback stops SB3 after its first vector step.
        run = bench.run_sb3(seed=0, minutes=0.0, threads=1, target=475.0)
    finally:
        torch.set_num_threads(threads)
    assert run["agent_steps"] == bench.SB3_CARTPOLE["n_envs"]
    assert not run["reached"] and run["time_to_target"] is None
    assert run["torch_threads"] == 1 and len(run["curve"]) == 1
