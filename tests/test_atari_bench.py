"""benchmarks/atari.py's pure parts: reading the curves (time to a target, the zoo-below-Shoal
check) and the Atari entries of benchmarks/suite.py. No training and no timing here."""

from __future__ import annotations

import numpy as np
import pytest
from bench_loader import benchmark_module


@pytest.fixture(scope="module")
def atari():
    with benchmark_module("atari.py") as module:
        yield module


# Curve points: (wall seconds, agent steps, mean return of the last 100 games).
SHOAL = [[30, 1000, None], [60, 2000, -20.0], [120, 4000, -10.0], [180, 6000, 5.0], [240, 8000, 19.0]]
ZOO = [[30, 500, None], [60, 1000, -20.5], [120, 2000, -19.0], [180, 3000, -15.0], [240, 4000, -12.0]]


def test_time_to_a_target_is_the_first_point_at_or_above_it(atari):
    assert atari.time_to(SHOAL, 5.0) == (180.0, 6000)
    assert atari.time_to(SHOAL, 18.0) == (240.0, 8000)
    assert atari.time_to(SHOAL, 20.0) is None


def test_a_curve_holds_each_value_until_its_next_point(atari):
    values = atari.value_at(SHOAL, np.array([10.0, 60.0, 119.9, 120.0, 500.0]))
    np.testing.assert_array_equal(values, [np.nan, -20.0, -20.0, -10.0, 19.0])


def test_the_zoo_below_every_shoal_seed_after_the_first_minute(atari):
    gap = atari.zoo_gap([SHOAL], [ZOO])
    assert gap["checked"] and gap["zoo_below_everywhere"]
    assert gap["largest_gap"] == pytest.approx(-0.5)  # at 60 s: zoo -20.5, Shoal -20.0
    assert gap["at_seconds"] == pytest.approx(60.0, abs=1.0)


def test_a_shoal_seed_below_the_zoo_anywhere_fails_the_check(atari):
    slow = [[60, 2000, -20.0], [120, 4000, -20.0], [180, 6000, -14.0], [240, 8000, 19.0]]
    gap = atari.zoo_gap([SHOAL, slow], [ZOO])
    assert not gap["zoo_below_everywhere"]
    assert gap["largest_gap"] == pytest.approx(1.0)  # at 120 s: zoo -19, the slow seed -20
    assert 120.0 <= gap["at_seconds"] < 180.0


def test_runs_shorter_than_the_settling_minute_are_not_judged(atari):
    assert atari.zoo_gap([SHOAL[:2]], [ZOO[:2]]) == {"checked": False, "why": "runs shorter than 60 s"}


def test_references_run_after_shoal_on_the_first_seeds_only_when_asked(atari):
    both = ["shoal", "zoo"]
    assert atari.plan([0, 1], both, None) == [(0, "shoal"), (0, "zoo"), (1, "shoal"), (1, "zoo")]
    assert atari.plan([0, 1, 2], both, 1) == [(0, "shoal"), (0, "zoo"), (1, "shoal"), (2, "shoal")]
    assert atari.plan([3, 4], both, 0) == [(3, "shoal"), (4, "shoal")]
    assert atari.plan([0, 1], ["shoal"], 2) == [(0, "shoal"), (1, "shoal")]


def test_atari_ids_get_the_zoo_only_with_its_atari_entry(atari):
    suite = atari.suite
    assert suite.is_atari("ALE/Pong-v5") and suite.is_atari("BreakoutNoFrameskip-v4")
    assert not suite.is_atari("CartPole-v1")
    assert suite.methods_for("ALE/Pong-v5", ["sb3", "zoo"]) == ["shoal", "zoo"]
    hp = suite.zoo_hyperparams("ALE/Breakout-v5")
    assert hp["policy"] == "CnnPolicy" and hp["frame_stack"] == 4 and hp["n_envs"] == 8
    setup = suite.zoo_setup(hp)
    assert setup.policy == "CnnPolicy" and setup.n_envs == 8 and setup.normalize is None
    assert "env_wrapper" not in setup.ppo_kwargs and "frame_stack" not in setup.ppo_kwargs
    assert setup.ppo_kwargs["n_epochs"] == 4 and setup.ppo_kwargs["batch_size"] == 256
    assert callable(setup.ppo_kwargs["learning_rate"]) and callable(setup.ppo_kwargs["clip_range"])


def test_the_report_says_the_throughput_ratio_and_the_time_to_target(atari):
    def run(method, curve, sps):
        return {"method": method, "seed": 0, "status": "ok", "curve": curve, "sps": sps,
                "agent_steps": curve[-1][1], "wall_time": curve[-1][0], "final_return": curve[-1][2]}

    data = {
        "settings": {"env": "ALE/Pong-v5", "budget": 240.0, "seeds": [0], "target": 18.0,
                     "machine": {"platform": "test", "available_cores": 2, "torch": "x",
                                 "stable_baselines3": "y", "ale_py": "z"}},
        "runs": [run("shoal", SHOAL, 1000.0), run("zoo", ZOO, 400.0)],
    }  # fmt: skip
    text = "\n".join(atari.summary(data))
    assert "| shoal | 0 | 1,000 | 0.03M | 240 s | 19.0 | 240 s, 0.03M frames |" in text
    assert "Shoal 1,000 steps/s, zoo 400: 2.5x" in text
    assert "from 60 s to 240 s: yes" in text
