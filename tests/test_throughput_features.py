"""Throughput features: double-buffered rollouts (train.overlap), the torch thread count and the
OpenMP wait policy chosen before torch loads (shoal.train.threads), and how the dashboard shows them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import shoal
import shoal.train.rollout as rollout
from shoal.core.config import Config, ConfigError, load_config
from shoal.policy import Policy, sample_actions
from shoal.train import threads, train
from shoal.train.dashboard import RichDashboard
from shoal.train.overlap import EnvHalves, EnvStepper, second_seed, split_counts
from shoal.train.rollout import Collector, RolloutBuffer

ROOT = Path(__file__).resolve().parent.parent
SNAKE = {"width": 40, "height": 30, "num_snakes": 4, "num_food": 16}
BUFFERS = (
    "obs",
    "actions",
    "log_probs",
    "values",
    "rewards",
    "dones",
    "truncated",
    "state_h",
    "state_c",
    "next_value",
)


def small_config(tmp_path, *flags, name="run", env="cartpole"):
    base = [
        "--run.dir", str(tmp_path),
        "--run.name", name,
        "--run.quiet", "true",
        "--run.log-interval", "1000",
        "--env.num-envs", "8",
        "--env.num-threads", "1",
        "--train.torch-threads", "1",
        "--train.batch-size", "256",
        "--train.bptt-horizon", "8",
        "--train.minibatch-size", "128",
        "--train.total-steps", "1024",
        "--policy.hidden-size", "16",
        "--train.device", "cpu",
    ]  # fmt: skip
    return load_config(env, base + list(flags))


def comparable(history):
    timing = ("wall_time", "sps")
    return [{k: v for k, v in m.items() if not k.startswith("time_") and k not in timing} for m in history]


def assert_same_history(a, b):
    assert len(a) == len(b)
    for x, y in zip(comparable(a), comparable(b), strict=True):
        assert x.keys() == y.keys()
        for key in x:
            same = x[key] == y[key] or (isinstance(x[key], float) and np.isnan(x[key]) and np.isnan(y[key]))
            assert same, f"epoch {x['epoch']}: {key} differs: {x[key]} vs {y[key]}"


# ---- EnvHalves ----


def test_env_halves_keep_the_vector_env_contract():
    env = EnvHalves("snake", 3, seed=5, num_threads=1, **SNAKE)
    try:
        assert split_counts(3) == (2, 1)
        assert [h.num_envs for h in env.halves] == [2, 1]
        assert env.num_envs == 3 and env.agents_per_env == 4 and env.num_agents == 12
        assert env.rows == (slice(0, 8), slice(8, 12))
        obs, infos = env.reset()
        assert obs is env.observations and obs.shape == (12, 121) and infos == []
        # Half 0 plays the games of the first envs of one env with the same seed.
        single = shoal.make("snake", num_envs=3, seed=5, num_threads=1, **SNAKE)
        single.reset()
        np.testing.assert_array_equal(obs[:8], single.observations[:8])
        rng = np.random.default_rng(0)
        for _ in range(20):
            actions = rng.integers(0, 4, size=12).astype(np.int32)
            o, r, te, tr, _ = env.step(actions)
            single.step(actions)
            np.testing.assert_array_equal(o[:8], single.observations[:8])
            np.testing.assert_array_equal(r[:8], single.rewards[:8])
            assert o.shape == (12, 121) and r.dtype == np.float32 and te.dtype == np.bool_
        env.send(np.zeros(12, np.int32))
        batch = env.recv()
        assert batch.observations.shape == (12, 121) and batch.agent_ids.tolist() == list(range(12))
        assert isinstance(env.render(2), str)
        single.close()
    finally:
        env.close()
    assert env.closed


def test_env_halves_seed_the_second_half_apart_and_reset_deterministically():
    assert second_seed(1) != 1 and second_seed(1) == second_seed(1) and 0 <= second_seed(2**40) < 2**63
    env = EnvHalves("breakout", 4, seed=3, num_threads=1)
    try:
        first = env.reset(seed=11)[0].copy()
        # Different games in the two halves (their (seed, env index) streams differ).
        rng = np.random.default_rng(1)
        for _ in range(30):
            env.step(rng.integers(0, 3, size=4).astype(np.int32))
        assert not np.array_equal(env.observations[:2], env.observations[2:])
        np.testing.assert_array_equal(env.reset(seed=11)[0], first)
    finally:
        env.close()


def test_env_halves_merge_the_episode_logs():
    env = EnvHalves("cartpole", 4, seed=0, num_threads=1, max_steps=5)
    try:
        env.reset()
        for _ in range(5):
            env.step(np.zeros(4, np.int32))
        log = env.log()
        assert log["episodes"] == 4 and log["score"] > 0
        assert env.log() == {}
    finally:
        env.close()


def test_env_stepper_steps_in_the_background_and_reports_errors():
    env = shoal.make("cartpole", num_envs=2, seed=0, num_threads=1)
    stepper = EnvStepper()
    try:
        stepper.start(env, np.zeros(2, np.int32))
        with pytest.raises(RuntimeError, match="in flight"):
            stepper.start(env, np.zeros(2, np.int32))
        stepper.wait()
        assert stepper.busy > 0
        stepper.start(env, np.full(2, 7, np.int32))  # out of range
        with pytest.raises(ValueError, match="action"):
            stepper.wait()
    finally:
        stepper.close()
        env.close()


# ---- the overlapped Collector ----


def collect_epochs(overlap, name, options, lstm, epochs=2, envs=6, steps=32, horizon=8):
    torch.manual_seed(0)
    env = EnvHalves(name, envs, seed=3, num_threads=1, **options)
    try:
        policy = Policy(env.single_observation_space, env.single_action_space, hidden_size=16, lstm=lstm)
        buf = RolloutBuffer(
            env.num_agents,
            steps,
            horizon,
            policy.obs_size,
            env.single_observation_space.dtype,
            policy.spec.dims,
            False,
            16 if lstm else 0,
            torch.device("cpu"),
        )
        collector = Collector(env, policy, buf, torch.device("cpu"), 0.99, reward_clip=0.5, overlap=overlap)
        obs, _ = env.reset()
        out = []
        for _ in range(epochs):
            obs = collector.collect(obs)
            saved = {k: getattr(buf, k).clone() for k in BUFFERS}
            out.append(saved | {"log": env.log(), "obs_np": obs.copy()})
        return out, collector
    finally:
        env.close()


@pytest.mark.parametrize(
    ("name", "options", "lstm"),
    [("cartpole", {"max_steps": 20}, True), ("cartpole", {"max_steps": 20}, False), ("snake", SNAKE, True)],
)
def test_overlap_fills_the_same_buffer_as_plain_rollout(monkeypatch, name, options, lstm):
    """With greedy actions both modes see the same trajectories; every buffer (truncation
    bootstrap, reward clip, LSTM resets and segment states included) must match."""
    monkeypatch.setattr(rollout, "sample_actions", lambda p, logits: sample_actions(p, logits, True))
    plain, _ = collect_epochs(False, name, options, lstm)
    overlapped, collector = collect_epochs(True, name, options, lstm)
    assert collector.times.env >= 0 and collector.env_hidden >= 0
    truncations = 0
    for a, b in zip(plain, overlapped, strict=True):
        assert a["log"] == b["log"]
        np.testing.assert_array_equal(a["obs_np"], b["obs_np"])
        for key in BUFFERS:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)
        truncations += int(a["truncated"].sum())
    if name == "cartpole":
        assert truncations > 0  # the bootstrap path ran


def test_overlap_collects_sampled_actions_deterministically():
    a, _ = collect_epochs(True, "cartpole", {"max_steps": 20}, True)
    b, _ = collect_epochs(True, "cartpole", {"max_steps": 20}, True)
    for x, y in zip(a, b, strict=True):
        for key in BUFFERS:
            assert torch.equal(x[key], y[key]), key


def test_collector_overlap_needs_env_halves():
    env = shoal.make("cartpole", num_envs=2)
    policy = Policy(env.single_observation_space, env.single_action_space, hidden_size=8, lstm=False)
    buf = RolloutBuffer(2, 8, 8, 4, np.float32, 1, False, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="EnvHalves"):
        Collector(env, policy, buf, torch.device("cpu"), 0.99, overlap=True)


# ---- training with overlap ----


def test_overlap_training_is_deterministic_and_reports_itself(tmp_path):
    flags = [
        "--train.deterministic", "true",
        "--policy.lstm", "true",
        "--train.update-epochs", "2",
        "--train.overlap", "true",
        "--train.reward-clip", "0.5",
        "--env.options.max-steps", "30",
    ]  # fmt: skip
    a = train(small_config(tmp_path, *flags, name="a"))
    b = train(small_config(tmp_path, *flags, name="b"))
    assert_same_history(a.history, b.history)
    m = a.metrics
    assert m["overlap"] is True and m["episodes"] > 0 and m["time_env_hidden"] >= 0
    assert m["torch_threads"] == 1 and m["env_threads"] == 1
    assert m["omp_wait_policy"].rstrip("?") in ("passive", "active", "default")
    line = json.loads((a.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["overlap"] is True
    c = train(small_config(tmp_path, *flags, "--train.seed", "7", name="c"))
    assert comparable(a.history) != comparable(c.history)


def test_overlap_resume_equals_uninterrupted(tmp_path):
    flags = [
        "--train.deterministic", "true",
        "--policy.lstm", "true",
        "--train.overlap", "true",
        "--train.checkpoint-interval", "2",
        "--train.total-steps", "1536",
    ]  # fmt: skip
    whole = train(small_config(tmp_path, *flags, name="whole"))
    first = train(small_config(tmp_path, *flags, name="split"), on_epoch=lambda m: m["epoch"] < 2)
    rest = train(small_config(tmp_path, *flags, "--run.resume", str(first.run_dir), name="x"))
    assert_same_history(whole.history, rest.history)


def test_overlap_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="num_envs >= 2"):
        one_env = ["--env.num-envs", "1", "--train.batch-size", "64", "--train.minibatch-size", "64"]
        train(small_config(tmp_path, "--train.overlap", "true", *one_env))
    with pytest.raises(ConfigError, match="native"):
        train(small_config(tmp_path, "--train.overlap", "true", "--env.backend", "serial"))
    assert not any(tmp_path.iterdir())  # no run folder for a config error


# ---- threads and the wait policy ----


def test_choose_torch_threads(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.choose_torch_threads(0) == 2
    assert threads.choose_torch_threads(0, processes_per_machine=8) == 1
    assert threads.choose_torch_threads(3) == 3
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert threads.choose_torch_threads(0) == 1
    with pytest.raises(ValueError, match="torch_threads"):
        threads.choose_torch_threads(-1)


def test_resolve_wait_policy():
    assert threads.resolve_wait_policy("auto", {}) == "passive"
    assert threads.resolve_wait_policy("auto", {"OMP_WAIT_POLICY": "Active"}) == "active"
    assert threads.resolve_wait_policy("auto", {"OMP_WAIT_POLICY": "bogus"}) == "passive"
    assert threads.resolve_wait_policy("active", {"OMP_WAIT_POLICY": "passive"}) == "active"
    with pytest.raises(ValueError, match="omp_wait_policy"):
        threads.resolve_wait_policy("spin")


def test_wait_policy_after_torch_loaded_is_reported_not_changed(monkeypatch):
    # torch is loaded in this process: nothing can change the policy any more.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.prepare_wait_policy("active") is False
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    status = threads.wait_policy_status("active")
    assert status.effective == "passive" and "asked active" in status.note
    assert "OMP_WAIT_POLICY" in status.label()


def test_config_key_is_validated():
    with pytest.raises(ConfigError, match="omp_wait_policy"):
        load_config("cartpole", ["--train.omp-wait-policy", "spin"])


SPIN_PROBE = """
import json, os, sys, time
from shoal.core.config import load_config
from shoal.cli import prepare_threads
cfg = load_config("cartpole", ["--train.omp-wait-policy", sys.argv[1]])
assert "torch" not in sys.modules
prepare_threads(cfg)
import torch
from shoal.train import threads
torch.set_num_threads(2)
a = torch.randn(256, 256)
spins = []
for _ in range(5):
    a @ a
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(0.03)
    spins.append((time.process_time() - c0) / (time.perf_counter() - w0))
status = threads.wait_policy_status(sys.argv[1]).label()
print(json.dumps({"env": os.environ.get("OMP_WAIT_POLICY"), "status": status, "spin": max(spins)}))
"""


def run_probe(policy: str, env: dict | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env or {})
    cmd = [sys.executable, "-c", SPIN_PROBE, policy]
    out = subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(threads.available_cores() < 2, reason="needs 2 cores for an OpenMP worker")
def test_the_wait_policy_takes_effect_when_set_before_torch():
    """An idle OpenMP worker spins with ACTIVE and sleeps with PASSIVE: the CPU the process burns
    while its main thread sleeps right after a parallel region tells them apart."""
    passive = run_probe("passive", {"OMP_WAIT_POLICY": "active"})  # the config wins over the environment
    assert passive["env"] == "PASSIVE" and passive["status"] == "passive"
    assert passive["spin"] < 0.05
    active = run_probe("active")
    assert active["env"] == "ACTIVE" and active["status"] == "active"
    assert active["spin"] > 0.1
    auto = run_probe("auto")
    assert auto["env"] == "PASSIVE" and auto["spin"] < 0.05


def test_shoal_train_runs_with_the_configured_wait_policy(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "shoal", "train", "cartpole", "--quiet",
        "--run.dir", str(tmp_path), "--run.name", "wp",
        "--train.omp-wait-policy", "active", "--train.total-steps", "256", "--train.batch-size", "256",
        "--env.num-envs", "8", "--train.bptt-horizon", "8", "--train.minibatch-size", "128",
        "--policy.hidden-size", "8", "--train.torch-threads", "1",
    ]  # fmt: skip
    subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, check=True)
    metrics = json.loads((tmp_path / "wp" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["omp_wait_policy"] == "active" and metrics["torch_threads"] == 1
    assert metrics["overlap"] is False


# ---- the dashboard ----


def test_dashboard_shows_threads_wait_policy_and_overlap():
    cfg = Config()
    cfg.env.name = "breakout"
    cfg.train.device = "cpu"
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    dashboard = RichDashboard(cfg, console=console)
    try:
        dashboard.update(
            {
                "epoch": 1,
                "torch_threads": 2,
                "env_threads": 1,
                "omp_wait_policy": "passive",
                "overlap": True,
                "time_env": 0.01,
                "time_env_hidden": 0.03,
            }
        )
        out = Console(file=io.StringIO(), width=120, record=True)
        out.print(dashboard.renderable())
        text = out.export_text()
    finally:
        dashboard.close()
    assert "torch 2 · env 2 x 1" in text
    assert "passive" in text
    assert "on · 75% of env time hidden" in text


# ---- the thread tuner ----


def simulate(cost, epochs, **kwargs):
    """A ThreadTuner over `epochs` phases, each taking cost(epoch, threads) seconds."""
    now = [0.0]
    used = []
    report: dict = {}
    tuner = threads.ThreadTuner([2, 1], lambda n: None, report=report, clock=lambda: now[0], **kwargs)
    for epoch in range(epochs):
        n = tuner.begin()
        assert report["torch_threads"] == n
        used.append(n)
        now[0] += cost(epoch, n)
        tuner.end()
        now[0] += 5.0  # other phases: not counted
    return used, tuner


def test_thread_tuner_settles_on_the_faster_count_and_probes_rarely():
    used, tuner = simulate(lambda e, n: 1.0 if n == 1 else 1.8, 60)
    assert used[:3] == [2, 2, 1]  # warm-up, then one of each
    assert tuner.best == 1
    probes = [e for e, n in enumerate(used) if e >= 4 and n == 2]
    assert 1 <= len(probes) <= 4  # after 4, 8, 16, ... epochs
    assert all(b - a >= 4 for a, b in zip(probes, probes[1:], strict=False))
    assert sum(n == 1 for n in used) >= 54


def test_thread_tuner_follows_a_change_of_load():
    # 2 threads faster at first, then (another process started) 1 thread twice as fast.
    used, tuner = simulate(lambda e, n: (1.0 if n == 2 else 1.5) if e < 30 else (2.0 if n == 2 else 1.0), 60)
    assert used[10:30].count(2) >= 18
    assert tuner.best == 1 and used[-10:].count(1) >= 9
    switched = next(e for e in range(30, 60) if used[e] == 1 and used[e + 1] == 1)
    assert switched <= 40


def test_thread_tuner_with_one_candidate_never_changes():
    tuner = threads.ThreadTuner([1], lambda n: None)
    tuner.end()  # nothing begun: no-op
    for _ in range(5):
        assert tuner.begin() == 1
        tuner.end()


def test_tuners_run_only_for_automatic_cpu_threads(tmp_path):
    from shoal.train.trainer import thread_tuners

    cfg = small_config(tmp_path, "--train.torch-threads", "0")
    info = {"torch_threads": 2}
    pair = thread_tuners(cfg.train, torch.device("cpu"), info)
    assert pair is not None and info["threads_tuned"] and info["torch_threads_rollout"] == 2
    assert thread_tuners(cfg.train, torch.device("cpu"), {"torch_threads": 1}) is None
    cfg.train.deterministic = True
    assert thread_tuners(cfg.train, torch.device("cpu"), {"torch_threads": 2}) is None
    cfg = small_config(tmp_path)  # torch_threads 1
    assert thread_tuners(cfg.train, torch.device("cpu"), {"torch_threads": 2}) is None


def test_training_with_tuned_threads_reports_each_phase(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    result = train(small_config(tmp_path, "--train.torch-threads", "0", "--train.total-steps", "2048"))
    counts = {(m["torch_threads_rollout"], m["torch_threads"]) for m in result.history}
    assert all(m["threads_tuned"] for m in result.history)
    assert {r for r, _ in counts} <= {1, 2} and {u for _, u in counts} <= {1, 2}
    # The first round tries both counts in both phases.
    assert {r for r, _ in counts} == {1, 2} and {u for _, u in counts} == {1, 2}
    assert torch.get_num_threads() in (1, 2)


def test_dashboard_shows_tuned_threads_per_phase():
    cfg = Config()
    cfg.train.device = "cpu"
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    dashboard = RichDashboard(cfg, console=console)
    try:
        dashboard.update({"epoch": 3, "torch_threads": 1, "torch_threads_rollout": 2, "threads_tuned": True})
        out = Console(file=io.StringIO(), width=120, record=True)
        out.print(dashboard.renderable())
        text = out.export_text()
    finally:
        dashboard.close()
    assert "torch 2/1 (tuned)" in text and "overlap" in text and "off" in text


def test_dashboard_says_when_the_wait_policy_is_not_the_one_asked():
    cfg = Config()
    cfg.train.omp_wait_policy = "active"
    dashboard = RichDashboard(cfg, console=Console(file=io.StringIO(), force_terminal=True, width=120))
    try:
        dashboard.update({"epoch": 1, "omp_wait_policy": "passive?"})
        out = Console(file=io.StringIO(), width=120, record=True)
        out.print(dashboard.renderable())
        text = out.export_text()
    finally:
        dashboard.close()
    assert "passive? (asked active)" in text


# ---- precision ----


def test_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it_natively(monkeypatch):
    from shoal.core import hardware

    cpu = torch.device("cpu")
    for flags, expected in (
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx2", "amx_tile", "amx_bf16"}, "bfloat16"),
        ({"avx2", "avx512f", "avx512bw"}, "float32"),  # AVX-512 without BF16: emulated
        (set(), "float32"),  # no /proc/cpuinfo (not Linux)
    ):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert hardware.resolve_precision("auto", cpu) == expected, flags
        # An explicit choice is kept whatever the CPU.
        assert hardware.resolve_precision("float32", cpu) == "float32"
        assert hardware.resolve_precision("bfloat16", cpu) == "bfloat16"


def test_training_reports_the_precision_auto_chose(tmp_path, monkeypatch):
    from shoal.core import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    result = train(small_config(tmp_path, "--train.precision", "auto", "--train.total-steps", "1024"))
    assert {m["precision"] for m in result.history} == {"float32"}
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    result = train(small_config(tmp_path, "--train.precision", "auto", "--train.total-steps", "1024"))
    assert {m["precision"] for m in result.history} == {"bfloat16"}
