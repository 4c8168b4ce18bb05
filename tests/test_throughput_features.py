"""Throughput features: the torch thread count, tuned per phase of the epoch, and the OpenMP wait
policy chosen before torch loads (shoal.train.threads), and how the dashboard shows them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from shoal.core.config import Config, ConfigError, load_config
from shoal.train import threads, train
from shoal.train.dashboard import RichDashboard

ROOT = Path(__file__).resolve().parent.parent


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
    assert "overlap" not in metrics and "time_env_hidden" not in metrics


def test_importing_the_trainer_leaves_the_wait_policy_to_the_program():
    """Importing shoal.train sets nothing; prepare_wait_policy, called before torch loads, does."""
    probe = (
        "import json, os\n"
        "import shoal.train, shoal.train.trainer\n"
        "print(json.dumps({'after_import': os.environ.get('OMP_WAIT_POLICY')}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=environ, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"after_import": None}
    prepare = (
        "import os, sys\n"
        "from shoal.train import threads\n"
        "assert 'torch' not in sys.modules\n"
        "assert threads.prepare_wait_policy('auto') is True\n"
        "import torch\n"
        "from shoal.train.threads import configure_threads\n"
        "print(os.environ['OMP_WAIT_POLICY'], configure_threads(1)['omp_wait_policy'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", prepare], env=environ, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", "passive"]


# ---- the dashboard ----


def test_dashboard_shows_threads_and_wait_policy():
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
                "time_env": 0.01,
            }
        )
        out = Console(file=io.StringIO(), width=120, record=True)
        out.print(dashboard.renderable())
        text = out.export_text()
    finally:
        dashboard.close()
    assert "torch 2 · env 1" in text
    assert "passive" in text
    assert "overlap" not in text


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
    def tuned(train_cfg, device_type="cpu", threads_now=2):
        info = {"torch_threads": threads_now}
        hook = threads.phase_threads(train_cfg, device_type, info)
        assert hook.info is info
        return isinstance(hook, threads.TunedPhaseThreads), info

    cfg = small_config(tmp_path, "--train.torch-threads", "0")
    on, info = tuned(cfg.train)
    assert on and info["threads_tuned"] and info["torch_threads_rollout"] == 2
    assert not tuned(cfg.train, threads_now=1)[0]
    assert not tuned(cfg.train, device_type="cuda")[0]
    cfg.train.compile = True
    assert not tuned(cfg.train)[0]
    cfg.train.compile, cfg.train.deterministic = False, True
    assert not tuned(cfg.train)[0]
    cfg = small_config(tmp_path)  # torch_threads 1
    assert not tuned(cfg.train)[0]


def test_the_phase_hook_times_each_phase_with_its_own_tuner(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    info = {"torch_threads": 2}
    hook = threads.TunedPhaseThreads(info)
    now = [0.0]
    for tuner in hook.tuners.values():
        tuner.clock = lambda: now[0]
    used = []
    for _ in range(3):
        with hook.phase("rollout"):
            now[0] += 1.0
        with hook.phase("update"):
            now[0] += 3.0
        used.append((info["torch_threads_rollout"], info["torch_threads"]))
    # Warm-up, then each count once per phase; each phase counts only its own time.
    assert used == [(2, 2), (2, 2), (1, 1)]
    assert hook.tuners["rollout"].samples == {2: [1.0], 1: [1.0]}
    assert hook.tuners["update"].samples == {2: [3.0], 1: [3.0]}


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
    assert "torch 2/1 (tuned)" in text


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
