"""benchmarks/suite.py's pure parts: time to SB3's final return and the verdict, the zoo settings as
SB3 takes them, the report tables, and the SB3 adapter over Shoal's C envs (a few steps of pong).

No training and no timing here: the timings are the benchmark's job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bench_loader import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("suite.py") as module:
        yield module


def run(env: str, method: str, seed: int, curve: list, status: str = "ok", sps: float = 1000.0) -> dict:
    """A finished run's record as the workers write it (curve points: wall s, steps, return)."""
    return {
        "env": env,
        "method": method,
        "seed": seed,
        "status": status,
        "curve": curve,
        "final_return": curve[-1][2] if curve else None,
        "sps": sps,
    }


# ---- time to SB3's final return, verdicts ----


def test_time_to_reach_is_the_first_point_at_or_above_the_target(bench) -> None:
    curve = [[1.0, 10, math.nan], [2.0, 20, 5.0], [3.0, 30, 10.0], [4.0, 40, 8.0], [5.0, 50, 12.0]]
    assert bench.time_to_reach(curve, 10.0) == 3.0
    assert bench.time_to_reach(curve, 11.0) == 5.0
    assert bench.time_to_reach(curve, 13.0) is None
    # A point without episodes yet (null in the JSON) never counts.
    assert bench.time_to_reach([[1.0, 1, None], [2.0, 2, -1.0]], -5.0) == 2.0


def test_never_reaching_is_below_with_no_speed_up(bench) -> None:
    runs = [
        run("e", "sb3", 0, [[75.0, 100, 50.0], [150.0, 200, 100.0]]),
        run("e", "shoal", 0, [[10.0, 1000, 20.0], [150.0, 9000, 99.0]]),
    ]
    row = bench.summarize("e", runs, 150.0)
    assert row.sb3_final == 100.0 and row.shoal_final == 99.0
    assert row.time_to_sb3 is None and row.speedup is None
    assert row.verdict == "below"
    assert bench.row_cells(row)[4] == "never"


def test_reaching_exactly_at_a_third_of_the_budget_is_3x(bench) -> None:
    runs = [
        run("e", "sb3", 0, [[150.0, 200, 100.0]]),
        run("e", "shoal", 0, [[49.0, 1000, 99.9], [50.0, 2000, 100.0], [150.0, 9000, 90.0]]),
    ]
    row = bench.summarize("e", runs, 150.0)
    assert row.time_to_sb3 == 50.0
    assert row.speedup == pytest.approx(3.0)
    # At the line, not past it; Shoal's lower final return doesn't matter then.
    assert row.verdict == "3x"
    assert bench.verdict(50.0 + 1e-9, 150.0, 90.0, 100.0) == "below"
    assert bench.verdict(51.0, 150.0, 101.0, 100.0) == "above"


def test_medians_over_seeds(bench) -> None:
    sb3 = [
        run("e", "sb3", s, [[150.0, 1, final]], sps=sps)
        for s, final, sps in [(0, 100.0, 10), (1, 300.0, 30), (2, 200.0, 20)]
    ]
    # SB3's median final is 200: seed 0 reaches it at 20 s, seed 1 at 40 s, seed 2 never.
    shoal = [
        run("e", "shoal", 0, [[20.0, 1, 200.0], [150.0, 2, 250.0]], sps=100),
        run("e", "shoal", 1, [[20.0, 1, 150.0], [40.0, 2, 210.0], [150.0, 3, 190.0]], sps=300),
        run("e", "shoal", 2, [[150.0, 1, 199.0]], sps=200),
    ]
    zoo = [run("e", "zoo", s, [[100.0, 1, v]]) for s, v in [(0, 1.0), (1, 5.0), (2, 3.0)]]
    row = bench.summarize("e", [*sb3, *shoal, *zoo], 150.0)
    assert row.sb3_final == 200.0 and row.zoo_final == 3.0 and row.shoal_final == 199.0
    assert row.time_to_sb3 == 40.0  # median of 20, 40 and never (infinitely slow)
    assert row.speedup == pytest.approx(150.0 / 40.0)
    assert row.verdict == "3x"  # 40 <= 50
    assert row.sb3_sps == 20 and row.shoal_sps == 200
    # With two of three seeds never there, the median is never.
    assert bench.median_time([20.0, None, None]) is None
    assert bench.median_time([30.0, None]) is None
    assert bench.median_time([30.0, 10.0]) == 20.0


def test_crashed_runs_and_missing_references(bench) -> None:
    runs = [
        run("e", "shoal", 0, [[150.0, 1, 5.0]]),
        run("e", "sb3", 0, [], status="crash"),
    ]
    row = bench.summarize("e", runs, 150.0)
    assert row.sb3_final is None and row.verdict == "-"
    assert bench.row_cells(row)[4] == "-"
    # SB3 ran but no episode finished: nothing to compare against.
    runs[1] = run("e", "sb3", 0, [[150.0, 2048, None]])
    assert bench.summarize("e", runs, 150.0).verdict == "n/a"


def test_tables_line_up(bench) -> None:
    rows = [
        bench.summarize("CartPole-v1", [run("CartPole-v1", "shoal", 0, [[1.0, 1, 500.0]])], 150.0),
        bench.summarize("pong", [run("pong", "shoal", 0, [[1.0, 1, -3.0]])], 150.0),
    ]
    assert rows[0].shoal_stops == "" and bench.row_cells(rows[0])[3] == "500.0"
    stopped = {**run("CartPole-v1", "shoal", 0, [[4.0, 1, 477.0]]), "stopped_by": "target"}
    assert bench.row_cells(bench.summarize("CartPole-v1", [stopped], 150.0))[3] == "477.0 (target)"
    text = bench.text_table(rows).splitlines()
    assert len(text) == 4 and len({len(line) for line in text}) == 1
    md = bench.markdown_table(rows).splitlines()
    assert md[0].startswith("| env |") and len(md) == 4
    assert all(line.count("|") == len(bench.HEADER) + 1 for line in md)


def test_json_is_strict(bench, tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    bench.write_json(path, {"a": [1.0, math.nan, math.inf, np.float32(2.5)], "p": tmp_path})
    data = json.loads(path.read_text())
    assert data == {"a": [1.0, None, None, 2.5], "p": str(tmp_path)}


# ---- names and command line ----


def test_methods_per_env(bench) -> None:
    both = ["sb3", "zoo"]
    assert bench.methods_for("HalfCheetah-v5", both) == ["shoal", "sb3", "zoo"]
    assert bench.methods_for("HalfCheetah-v5", ["sb3"]) == ["shoal", "sb3"]
    assert bench.methods_for("pong", both) == ["shoal", "sb3"]
    assert bench.methods_for("snake", []) == ["shoal"]
    assert bench.shoal_name("Ant-v5") == "gym:Ant-v5" and bench.shoal_name("snake") == "snake"
    assert bench.parse_references("none") == [] and bench.parse_references("sb3") == ["sb3"]
    with pytest.raises(Exception, match="comma list"):
        bench.parse_references("sb4")
    # Every default env with a zoo entry is a Gymnasium id; the C envs have none.
    assert set(bench.ZOO) <= {e for e in bench.DEFAULT_ENVS if bench.is_gym(e)}


def test_shoal_recorder_stops_at_the_budget(bench) -> None:
    recorder = bench.ShoalRecorder(budget=10.0, started=0.0)
    epoch = {"agent_steps": 512, "score_100": 3.0, "return_100": -1.0}
    assert recorder({**epoch, "wall_time": 4.0}) is True
    assert recorder({**epoch, "wall_time": 9.9, "return_100": math.nan}) is True
    assert recorder({**epoch, "wall_time": 10.0, "return_100": 0.5}) is False
    assert [p[0] for p in recorder.curve] == [4.0, 9.9, 10.0]
    assert recorder.curve[-1][2] == pytest.approx(0.5)  # the returns, not the scores
    assert recorder.score_100 == [3.0, 3.0, 3.0]
    assert recorder.setup_seconds is not None


# ---- the zoo's settings ----


def test_zoo_halfcheetah_as_sb3_takes_it(bench) -> None:
    torch = pytest.importorskip("torch")
    setup = bench.zoo_setup(bench.zoo_hyperparams("HalfCheetah-v5"))
    assert setup.n_envs == 1 and setup.n_timesteps == 1_000_000 and setup.policy == "MlpPolicy"
    assert setup.normalize == {"norm_obs": True, "norm_reward": True, "gamma": 0.98}
    kwargs = setup.ppo_kwargs
    assert kwargs["policy_kwargs"] == {
        "log_std_init": -2,
        "ortho_init": False,
        "activation_fn": torch.nn.ReLU,
        "net_arch": {"pi": [256, 256], "vf": [256, 256]},
    }
    assert kwargs["n_steps"] == 512 and kwargs["batch_size"] == 64 and kwargs["n_epochs"] == 20
    assert kwargs["learning_rate"] == 2.0633e-05 and kwargs["gae_lambda"] == 0.92
    assert "zoo_key" not in kwargs and "normalize" not in kwargs


def test_zoo_schedules_sde_and_defaults(bench) -> None:
    pytest.importorskip("torch")
    cartpole = bench.zoo_setup(bench.zoo_hyperparams("CartPole-v1"))
    assert cartpole.n_envs == 8 and cartpole.normalize is None and cartpole.n_timesteps == 100_000
    lr = cartpole.ppo_kwargs["learning_rate"]
    assert lr(1.0) == pytest.approx(1e-3) and lr(0.5) == pytest.approx(5e-4)
    assert cartpole.ppo_kwargs["clip_range"](0.25) == pytest.approx(0.05)
    car = bench.zoo_setup(bench.zoo_hyperparams("MountainCarContinuous-v0"))
    assert car.ppo_kwargs["use_sde"] is True and car.normalize["gamma"] == 0.9999
    assert car.ppo_kwargs["policy_kwargs"] == {"log_std_init": -3.29, "ortho_init": False}
    ant = bench.zoo_setup(bench.zoo_hyperparams("Ant-v5"))
    # The zoo's MuJoCo defaults: SB3's PPO defaults in one env, normalized (gamma 0.99, PPO's own).
    assert ant.ppo_kwargs == {} and ant.n_envs == 1 and ant.normalize["gamma"] == 0.99


# ---- Shoal's C envs as an SB3 VecEnv ----


def step_randomly(vec, steps: int, seed: int = 0) -> tuple[list[tuple[int, float, float, int]], list[dict]]:
    """(agent, reported return, summed reward, length) per finished episode, and those infos."""
    rng = np.random.default_rng(seed)
    sums = np.zeros(vec.num_envs)
    lengths = np.zeros(vec.num_envs, dtype=int)
    finished, infos_done = [], []
    for _ in range(steps):
        obs, rewards, dones, infos = vec.step(rng.integers(0, vec.action_space.n, size=vec.num_envs))
        sums += rewards
        lengths += 1
        for i in np.flatnonzero(dones):
            finished.append((int(i), infos[i]["episode"]["r"], float(sums[i]), infos[i]["episode"]["l"]))
            assert lengths[i] == infos[i]["episode"]["l"]
            infos_done.append(infos[i])
            sums[i], lengths[i] = 0.0, 0
        assert not any("episode" in infos[i] for i in np.flatnonzero(~dones))
    return finished, infos_done


def test_native_vec_env_reports_the_summed_rewards(bench) -> None:
    pytest.importorskip("stable_baselines3")
    # Short games: 3 points end an episode (a terminal).
    vec = bench.native_vec_env("pong", seed=0, num_envs=2, points_to_win=3)
    try:
        assert vec.num_envs == vec.env.num_agents == 2
        vec.seed(5)
        obs = vec.reset()
        assert obs.shape == (2, 8) and obs is not vec.env.observations
        kept = obs.copy()
        finished, infos = step_randomly(vec, 1500)
        assert np.array_equal(obs, kept)  # handed-out obs are copies, not the C buffers
        assert len(finished) >= 2
        for _agent, reported, summed, _length in finished:
            assert reported == pytest.approx(summed) and reported != 0.0
        assert all(info["TimeLimit.truncated"] is False for info in infos)
        assert all(info["terminal_observation"].shape == (8,) for info in infos)
    finally:
        vec.close()


def test_native_vec_env_truncations_bootstrap_from_the_last_obs(bench) -> None:
    pytest.importorskip("stable_baselines3")
    vec = bench.native_vec_env("pong", seed=0, max_steps=20)
    try:
        vec.reset()
        finished, infos = step_randomly(vec, 60)
        truncated = [info for info in infos if info["TimeLimit.truncated"]]
        assert len(truncated) >= 2 and all(info["episode"]["l"] == 20 for info in truncated)
        assert all(reported == pytest.approx(summed) for _, reported, summed, _ in finished)
        # The C env's final observation of the truncated step, not the next episode's first.
        obs, _, dones, step_infos = vec.step(np.zeros(1, dtype=np.int64))
        for _ in range(40):
            if dones[0]:
                break
            obs, _, dones, step_infos = vec.step(np.zeros(1, dtype=np.int64))
        assert dones[0]
        assert np.array_equal(step_infos[0]["terminal_observation"], vec.env.final_observations[0])
        assert not np.array_equal(step_infos[0]["terminal_observation"], obs[0])
    finally:
        vec.close()


# ---- the parent's bookkeeping ----


def test_missing_dependency_skips_the_env_and_keeps_going(bench, monkeypatch, tmp_path: Path) -> None:
    from gymnasium.error import DependencyNotInstalled

    assert bench.is_missing_dependency(DependencyNotInstalled("Box2D is not installed"))
    assert not bench.is_missing_dependency(ValueError("no"))
    calls = []

    def launch(method, env, seed, budget, threads, logs):
        calls.append((env, method, seed))
        if env == "LunarLander-v3":
            return {
                "env": env,
                "method": method,
                "seed": seed,
                "status": "missing_dependency",
                "message": "Box2D",
            }
        record = run(env, method, seed, [[1.0, 10, 1.0]])
        return {**record, "agent_steps": 10, "wall_time": 1.0, "stopped_by": "budget"}

    monkeypatch.setattr(bench, "launch", launch)
    args = bench.parse(["--seeds", "2", "--budget", "1", "--out", str(tmp_path)])
    data = {"settings": {}, "runs": [], "skipped": {}}
    for env in ["LunarLander-v3", "pong"]:
        bench.run_env(env, args, data, tmp_path)
    assert calls[0] == ("LunarLander-v3", "shoal", 0)
    assert calls[1:] == [("pong", "shoal", 0), ("pong", "sb3", 0), ("pong", "shoal", 1), ("pong", "sb3", 1)]
    assert 'pip install -e ".[envs]"' in data["skipped"]["LunarLander-v3"]
    assert len(data["runs"]) == 4
    assert json.loads((tmp_path / "suite.json").read_text())["skipped"] == data["skipped"]


def test_a_rerun_replaces_the_run_of_the_same_env_method_and_seed(bench) -> None:
    first = {"env": "a", "method": "sb3", "seed": 0, "x": 1}
    data = {"runs": [first, {"env": "a", "method": "shoal", "seed": 0}]}
    bench.replace_run(data, {"env": "a", "method": "sb3", "seed": 0, "x": 2})
    bench.replace_run(data, {"env": "a", "method": "sb3", "seed": 1, "x": 3})
    assert [(r["method"], r["seed"], r.get("x")) for r in data["runs"]] == [
        ("sb3", 0, 2),
        ("shoal", 0, None),
        ("sb3", 1, 3),
    ]
    assert bench.parse_methods("sb3, zoo") == ["sb3", "zoo"]
