"""Whole sweeps: trials, failures, early stops, resume after SIGKILL, shared storage, CLI."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shoal.core.config import Config, load_config
from shoal.sweep.cli import main
from shoal.sweep.runner import SweepError, SweepSettings, _TrialMonitor, run_sweep
from shoal.sweep.storage import WORKER_ATTR, open_storage
from shoal.sweep.synthetic import PROBLEMS, SyntheticTrainer

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parent.parent
SMALL_SPACE = {
    "train.learning_rate": {"distribution": "log", "min": 1e-4, "max": 1e-1},
    "train.gamma": {"distribution": "logit", "min": 0.8, "max": 0.999},
    "train.total_steps": {"distribution": "log", "min": 1_000_000, "max": 20_000_000},
}


def base_config(**options) -> Config:
    cfg = Config()
    cfg.env.name = "synthetic"
    cfg.env.options.update(options)
    cfg.sweep = dict(SMALL_SPACE)
    return cfg


def settings(tmp_path, name="s", trials=6, **kw) -> SweepSettings:
    kw.setdefault("seed", 0)
    kw.setdefault("n_startup", 4)
    return SweepSettings(env="synthetic", name=name, trials=trials, sweep_dir=str(tmp_path), **kw)


def load(tmp_path, name="s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / f"{name}.journal")))


def test_end_to_end_sweep_follows_the_storage_contract(tmp_path):
    cfg = base_config()
    result = run_sweep(settings(tmp_path, trials=8), cfg, SyntheticTrainer("ppo_like"))
    assert result.counts["finished"] == 8 and result.counts["failed"] == 0
    assert result.storage == str(tmp_path / "s.journal")
    study = load(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["env"] == "synthetic"
    assert study.user_attrs["space"]["train.gamma"]["distribution"] == "logit"
    assert study.user_attrs["base_config"]["env"]["name"] == "synthetic"
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and result.front
    for t in complete:
        assert set(t.params) == set(SMALL_SPACE)
        score, cost = t.values
        assert math.isfinite(score) and cost > 0
        curve = t.user_attrs["curve"]
        assert len(curve) == 10 and all(len(p) == 3 for p in curve)
        assert [p[1] for p in curve] == sorted(p[1] for p in curve)
        assert t.user_attrs["agent_steps"] == t.params["train.total_steps"]
        assert t.user_attrs["config"]["train"]["learning_rate"] == t.params["train.learning_rate"]
        assert t.user_attrs["seed"] == t.user_attrs["config"]["train"]["seed"]
        assert t.user_attrs["config"]["run"]["name"] == f"s-trial{t.number:04d}"
    # Trial 0 starts from the base config's values, cheap.
    assert study.trials[0].params["train.learning_rate"] == pytest.approx(cfg.train.learning_rate)
    # Running it again with more trials continues the same study.
    run_sweep(settings(tmp_path, trials=10), cfg, SyntheticTrainer("ppo_like"))
    assert len(load(tmp_path).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 10


def test_failed_and_diverged_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    # With these options, lr above 3e-3 raises and lr above 1e-3 (up to 3e-3) diverges.
    cfg = base_config(crash_above_lr=3e-3, diverge_above_lr=1e-3)
    result = run_sweep(settings(tmp_path, trials=5, max_failures=40), cfg, SyntheticTrainer("ppo_like"))
    study = load(tmp_path)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert result.counts["finished"] == 5
    assert failed, "the learning-rate range should have produced failures"
    errors = [t.user_attrs["error"] for t in failed]
    for t in failed:
        lr = t.params["train.learning_rate"]
        assert ("synthetic crash" in t.user_attrs["error"]) == (lr > 3e-3)
        assert ("Diverged" in t.user_attrs["error"]) == (1e-3 < lr <= 3e-3)
        assert "Traceback" in t.user_attrs["traceback"]
    assert any("Diverged: policy_loss became nan" in e for e in errors) or any("crash" in e for e in errors)


def test_too_many_failures_stop_the_sweep(tmp_path):
    cfg = base_config(crash_above_lr=0.0)
    with pytest.raises(SweepError, match="3 trials failed"):
        run_sweep(settings(tmp_path, trials=5, max_failures=3), cfg, SyntheticTrainer("ppo_like"))


def test_max_cost_cuts_long_runs(tmp_path):
    cfg = base_config(epoch_seconds=0.05)
    cfg.sweep = {"train.learning_rate": SMALL_SPACE["train.learning_rate"]}
    run_sweep(settings(tmp_path, trials=1, max_cost=0.12), cfg, SyntheticTrainer("ppo_like"))
    (trial,) = load(tmp_path).trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["cut_at_max_cost"] is True
    assert len(trial.user_attrs["curve"]) < 10


def test_runs_behind_the_front_stop_early():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(4):
        # Finished runs that reached 1.0 almost at once: any later point is compared with them.
        study.add_trial(
            optuna.trial.create_trial(
                values=[1.0, 1e-6 * (i + 1)],
                user_attrs={"curve": [[1e-7, 100, 0.0 + 0.2 * i], [1e-6 * (i + 1), 1000, 1.0]]},
            )
        )
    trial = study.ask()
    s = SweepSettings(env="x", name="x", trials=10, n_startup=4, early_stop_margin=0.25, early_stop_after=0.5)
    monitor = _TrialMonitor(s, study, trial, total_steps=1000, on_tick=None)
    assert monitor({"agent_steps": 100, "score": 0.9}) is True  # before early_stop_after
    assert monitor({"agent_steps": 600, "score": 0.9}) is True  # close to the front
    assert monitor({"agent_steps": 700, "score": 0.9}) is True
    assert monitor({"agent_steps": 750, "score": 0.6}) is True  # mean of the last 3 points: 0.8
    assert monitor.stop_reason is None
    assert monitor({"agent_steps": 800, "score": 0.3}) is False  # mean 0.6 < 1.0 - 0.25 * 1.0
    assert "trailed the front" in monitor.stop_reason
    off = SweepSettings(env="x", name="x", trials=10, n_startup=4, early_stop_margin=None)
    monitor = _TrialMonitor(off, study, trial, total_steps=1000, on_tick=None)
    assert monitor({"agent_steps": 900, "score": -5.0}) is True


def test_diverged_loss_raises_in_the_monitor():
    study = optuna.create_study(directions=["maximize", "minimize"])
    monitor = _TrialMonitor(SweepSettings(env="x", name="x", trials=1), study, study.ask(), 100, None)
    with pytest.raises(RuntimeError, match="value_loss became inf"):
        monitor({"agent_steps": 10, "score": 1.0, "value_loss": math.inf})


def test_a_changed_space_is_refused_on_resume(tmp_path):
    run_sweep(settings(tmp_path, trials=1), base_config(), SyntheticTrainer("ppo_like"))
    cfg = base_config()
    cfg.sweep["train.gamma"] = {"distribution": "logit", "min": 0.9, "max": 0.999}
    with pytest.raises(SweepError, match=r"different search space \(differs in train.gamma\)"):
        run_sweep(settings(tmp_path, trials=2), cfg, SyntheticTrainer("ppo_like"))


def _cli_args(tmp_path, trials, name="k", extra=()):
    return [
        "synthetic", "--name", name, "--trials", str(trials), "--sweep-dir", str(tmp_path), "--quiet",
        "--train-fn", "shoal.sweep.synthetic:synthetic_train", "--seed", "0",
        "--env.options.epoch_seconds", "0.1", "--train.total-steps", "5000000", *extra,
    ]  # fmt: skip


def test_resume_after_sigkill(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "shoal.sweep.cli", *_cli_args(tmp_path, 4)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = tmp_path / "k.journal"
    killed_trial = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not journal.exists():
                continue
            trials = load(tmp_path, "k").trials
            states = [t.state for t in trials]
            running = [t for t in trials if t.state == TrialState.RUNNING and WORKER_ATTR in t.system_attrs]
            if TrialState.COMPLETE in states and running:
                killed_trial = running[0]
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and killed_trial is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_trial is not None, proc.stdout.read().decode()[-2000:]
    assert load(tmp_path, "k").trials[killed_trial.number].state == TrialState.RUNNING

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"re-queued trials [{killed_trial.number}]" in done.stderr
    study = load(tmp_path, "k")
    dead = study.trials[killed_trial.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["stale"] is True
    assert "stopped while running" in dead.user_attrs["error"]
    rerun = [t for t in study.trials if t.user_attrs.get("requeued_from") == killed_trial.number]
    assert len(rerun) == 1 and rerun[0].params == killed_trial.params
    assert rerun[0].state == TrialState.COMPLETE
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) >= 4


def test_two_workers_share_one_storage(tmp_path):
    cfg = base_config(epoch_seconds=0.1)
    result = run_sweep(settings(tmp_path, trials=6, workers=2), cfg, "shoal.sweep.synthetic:SyntheticTrainer")
    study = load(tmp_path)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert result.counts["finished"] >= 6 and len(finished) >= 6
    assert len({t.number for t in study.trials}) == len(study.trials)
    pids = {t.system_attrs[WORKER_ATTR]["pid"] for t in finished}
    assert len(pids) == 2 and os.getpid() not in pids
    # Each worker's training gets its share of the cores.
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {t.user_attrs["config"]["train"]["torch_threads"] for t in finished} == {threads}
    for i in range(2):
        assert (tmp_path / f"s.worker{i}.log").exists()


def test_cli_runs_a_sweep_and_prints_the_front(tmp_path, capsys):
    assert main(["sweep", *_cli_args(tmp_path, 3, extra=["--env.options.epoch_seconds", "0"])]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and f"optuna-dashboard {tmp_path / 'k.journal'}" in out
    assert len(load(tmp_path, "k").get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep.train.learning_rate]\ndistribution = 'log'\nmin = -1.0\nmax = 1e-2\n")
    assert main([*_cli_args(tmp_path, 3), "--config", str(bad)]) == 2
    assert "needs min > 0" in capsys.readouterr().err
    assert main([*_cli_args(tmp_path, 3), "--train.learnin-rate", "1e-3"]) == 2
    assert "did you mean 'train.learning_rate'" in capsys.readouterr().err
    # Usage errors are argparse's: exit status 2 with the reason on stderr.
    with pytest.raises(SystemExit) as stopped:
        main([*_cli_args(tmp_path, 0)])
    assert stopped.value.code == 2
    assert "argument --trials: expected a positive int, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*_cli_args(tmp_path, 3), "--sampler", "grid"])


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("SHOAL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    started = subprocess.run(
        ["bash", str(REPO / ".ci" / "postgres.sh")], capture_output=True, text=True, timeout=180
    )
    found = dict(re.findall(r"export (SHOAL_TEST_POSTGRES_\w+)=(\S+)", started.stdout))
    if started.returncode != 0 or "SHOAL_TEST_POSTGRES_URL" not in found:
        reason = "no PostgreSQL: SHOAL_TEST_POSTGRES_URL unset and .ci/postgres.sh failed: "
        reason += started.stderr[-500:]
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield found["SHOAL_TEST_POSTGRES_URL"]
    finally:
        subprocess.run(
            ["bash", str(REPO / ".ci" / "postgres.sh"), "--stop", found["SHOAL_TEST_POSTGRES_DATA"]],
            timeout=60,
        )


def test_postgres_storage_shared_by_two_sweep_processes(tmp_path, postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = base_config(epoch_seconds=0.1)
    # Two workers (processes) and then a second "machine" joining the same study by URL.
    run_sweep(
        settings(tmp_path, name=name, trials=4, workers=2, storage=postgres_url),
        cfg,
        "shoal.sweep.synthetic:SyntheticTrainer",
    )
    result = run_sweep(settings(tmp_path, name=name, trials=6, storage=postgres_url), cfg, SyntheticTrainer())
    assert result.storage == postgres_url and result.counts["finished"] == 6
    study = optuna.load_study(study_name=name, storage=open_storage(postgres_url))
    assert study.user_attrs["env"] == "synthetic"
    pids = {t.system_attrs[WORKER_ATTR]["pid"] for t in study.trials}
    assert len(pids) >= 2
    assert all("curve" in t.user_attrs for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_load_config_accepts_sweep_tables_for_the_cli(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[sweep.policy.hidden_size]\ndistribution = 'pow2'\nmin = 32\nmax = 128\n")
    cfg = load_config("synthetic", [], path, config_dir=None)
    assert cfg.sweep == {"policy.hidden_size": {"distribution": "pow2", "min": 32, "max": 128}}
    assert PROBLEMS["ppo_like"].space["policy.hidden_size"]["distribution"] == "pow2"


def test_tiny_real_cartpole_sweep(tmp_path):
    cfg = load_config("cartpole", ["--run.dir", str(tmp_path / "runs")])
    cfg.sweep = {
        "train.learning_rate": {"distribution": "log", "min": 1e-3, "max": 1e-2},
        "train.total_steps": {"distribution": "log", "min": 8_000, "max": 16_000},
    }
    result = run_sweep(settings(tmp_path, name="cp", trials=2, early_stop_margin=None), cfg)
    assert result.counts["complete"] == 2 and result.counts["failed"] == 0
    for t in load(tmp_path, "cp").trials:
        score, cost = t.values
        assert score > 0 and cost > 0
        assert t.user_attrs["agent_steps"] >= t.params["train.total_steps"]
        assert t.user_attrs["sps"] > 0 and len(t.user_attrs["curve"]) >= 3
        assert (tmp_path / "runs" / f"cp-trial{t.number:04d}" / "metrics.jsonl").exists()


def test_optuna_dashboard_reads_the_journal(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard (a dev dependency) is not installed")
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard
    from optuna_dashboard._storage_url import get_storage  # what `optuna-dashboard PATH` uses

    run_sweep(settings(tmp_path, trials=3), base_config(), SyntheticTrainer())
    app = optuna_dashboard.wsgi(get_storage(str(tmp_path / "s.journal")))

    def get(path):
        environ = {}
        setup_testing_defaults(environ)
        environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
        status = []
        body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
        assert status == ["200 OK"], body[:500]
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "s" and summary["directions"] == ["maximize", "minimize"]
    study = get(f"/api/studies/{summary['study_id']}")
    assert len(study["trials"]) == 3 and study["best_trials"]


def test_stale_trial_detection():
    import socket

    from shoal.sweep.storage import HEARTBEAT_ATTR, is_stale, worker_identity

    def running(identity, beat):
        attrs = {WORKER_ATTR: identity, HEARTBEAT_ATTR: beat}
        return optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=attrs)

    now = time.time()
    me = worker_identity()
    assert not is_stale(running(me, now - 10_000), now=now)  # alive on this host: never stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {"host": socket.gethostname(), "pid": dead.pid, "start": None}
    assert is_stale(running(gone, now), now=now)  # this host, process gone: stale at once
    reused = {**me, "start": "0"}  # our pid, but another process start time: a reused pid
    assert is_stale(running(reused, now), now=now)
    remote = {"host": "elsewhere.invalid", "pid": 1, "start": None}
    assert not is_stale(running(remote, now - 60), now=now, stale_after=300)
    assert is_stale(running(remote, now - 301), now=now, stale_after=300)
    assert not is_stale(optuna.trial.create_trial(values=[1.0, 1.0]), now=now)


def test_a_sweep_derives_the_recipe_of_an_env_without_one_once_for_all_trials() -> None:
    """The base config of a gym env without a recipe file is derived when the sweep starts, so
    trials (train() on a config marked "derived") never measure the env again or replace a
    sampled value; a --train-fn sweep is left alone (its env may not be a Shoal env)."""
    from shoal.sweep.cli import base_config, build_parser

    args = build_parser().parse_args(["gym:Pendulum-v1", "--name", "p", "--trials", "1"])
    base = base_config(args, ["--train.learning-rate", "0.0005"])
    assert base.env.recipe == "derived"
    assert base.train.learning_rate == 0.0005  # a flag still wins over the derived value
    custom = build_parser().parse_args(
        ["synthetic", "--name", "s", "--trials", "1", "--train-fn", "shoal.sweep.synthetic:synthetic_train"]
    )
    assert base_config(custom, []).env.recipe == "auto"
