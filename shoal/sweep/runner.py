"""Running sweeps: trials as training runs, worker loops, local worker processes.

Each trial is one training run of the base config with the sampled keys set. Its values are
``[score, cost_seconds]`` (docs/architecture.md section 3); its curve of
``[cost_seconds, agent_steps, score]`` points is a user attr. A run may end as:

- COMPLETE: it finished (or was cut at --max-cost, user attr `cut_at_max_cost`).
- PRUNED: stopped early because it was clearly behind the front at equal cost (user attr
  `stopped_early` says by how much); counts as finished but has no values.
- FAIL: it raised, diverged (non-finite loss) or never finished an episode (user attr `error`;
  the sampler scores it as the worst score seen, at the seconds it ran, user attr `cost`),
  or its worker died (user attr `stale`; the parameters are enqueued again).

A run cut at --max-cost is modelled at the agent steps it ran (user attr `agent_steps`), not at
the train.total_steps it asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from shoal.core.checks import check_positive_int
from shoal.core.config import Config, from_dict, set_key
from shoal.sweep.pareto import front_score_at, pareto_front, trial_points
from shoal.sweep.sampler import SAMPLERS, finished_states, make_sampler
from shoal.sweep.space import SearchSpace, config_values, space_from_config
from shoal.sweep.storage import (
    STALE_AFTER_SECONDS,
    SWEEP_DIR,
    Heartbeat,
    open_storage,
    reap_stale_trials,
    requeue,
    storage_url,
)

DIRECTIONS = ["maximize", "minimize"]
TrainFn = Callable[..., Any]
# One epoch's score is noisy; a run is scored by the mean of its last few.
SCORE_WINDOW = 3


class SweepError(RuntimeError):
    """A sweep that cannot start or go on."""


class Diverged(RuntimeError):
    """The training run produced a non-finite loss."""


@dataclass
class SweepSettings:
    """Everything a worker needs besides the base config (plain data: crosses process borders)."""

    env: str
    name: str
    trials: int
    workers: int = 1
    storage: str | None = None
    sampler: str = "pareto"
    max_cost: float | None = None
    seed: int | None = None
    # Stop a run whose score trails the front at equal cost by more than this fraction of the
    # observed score range; None turns early stopping off.
    early_stop_margin: float | None = 0.25
    # ... but only after it has spent this fraction of its agent steps.
    early_stop_after: float = 0.25
    # Trials seen finished before runs are compared with the front, and before the model.
    n_startup: int = 8
    stale_after: float = STALE_AFTER_SECONDS
    max_failures: int | None = None
    sweep_dir: str = SWEEP_DIR
    # "module:function" or None for shoal.train.train.
    train_fn: str | None = None

    def __post_init__(self) -> None:
        check_positive_int("trials", self.trials)
        check_positive_int("workers", self.workers)
        if self.sampler not in SAMPLERS:
            raise SweepError(f"unknown sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.max_cost is not None and not self.max_cost > 0:
            raise SweepError(f"--max-cost must be a positive number of seconds, got {self.max_cost}")
        if self.early_stop_margin is not None and self.early_stop_margin < 0:
            raise SweepError(f"the early-stop margin must be >= 0 (or off), got {self.early_stop_margin}")

    @property
    def url(self) -> str:
        return storage_url(self.name, self.storage, self.sweep_dir)

    @property
    def failure_limit(self) -> int:
        return self.max_failures if self.max_failures is not None else max(5, self.trials)


def train_with_wait_policy(cfg: Config, on_epoch: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """shoal.train.train, with train.omp_wait_policy put into the environment first, as `shoal
    train` does: a spawned worker has not loaded torch yet, so the policy still takes effect."""
    from shoal.train import threads

    threads.prepare_wait_policy(cfg.train.omp_wait_policy)
    from shoal.train import train

    return train(cfg, on_epoch=on_epoch)


def resolve_train_fn(spec: str | TrainFn | None) -> TrainFn:
    """The train function of --train-fn: None -> shoal.train.train (through
    train_with_wait_policy), a callable -> itself, 'module:function' -> that function (a class
    there is instantiated). ValueError if unusable."""
    if callable(spec):
        return spec
    if spec is None:
        return train_with_wait_policy
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--train-fn must look like MODULE:FUNCTION (e.g. shoal.train:train), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--train-fn {spec}: cannot import {module_name}: {e}") from None
    function = getattr(module, attr, None)
    if isinstance(function, type):
        function = function()
    if not callable(function):
        raise ValueError(f"--train-fn {spec}: {module_name} has no function {attr!r}")
    return function


def share_threads(cfg: Config, workers: int) -> None:
    """Runs side by side share the machine: automatic (0) thread counts become one worker's share."""
    share = max(1, (os.cpu_count() or 1) // workers)
    if cfg.train.torch_threads == 0:
        cfg.train.torch_threads = share
    if cfg.env.num_threads == 0:
        cfg.env.num_threads = share


def recent_score(curve: list[list[float]]) -> float:
    """A run's score: the mean of its last SCORE_WINDOW curve scores (NaN for an empty curve)."""
    recent = [point[2] for point in curve[-SCORE_WINDOW:]]
    return sum(recent) / len(recent) if recent else math.nan


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def open_study(settings: SweepSettings, base: Config, space: SearchSpace, worker: int = 0) -> optuna.Study:
    """Create the study (or join it), with this worker's sampler; checks it is the same sweep."""
    storage = open_storage(settings.url)
    center = config_values(base, space.keys)
    seed = None if settings.seed is None else settings.seed + worker
    sampler = make_sampler(
        settings.sampler,
        space,
        seed=seed,
        center=center,
        max_cost=settings.max_cost,
        n_startup=settings.n_startup,
        sobol_seed=settings.seed,
    )
    study = optuna.create_study(
        storage=storage, study_name=settings.name, directions=DIRECTIONS, sampler=sampler, load_if_exists=True
    )
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise SweepError(
            f"study '{settings.name}' in {settings.url} has directions "
            f"{[d.name.lower() for d in study.directions]}, not {DIRECTIONS}: it is not a shoal sweep"
        )
    attrs = study.user_attrs
    wanted_space = _jsonable(space.to_dict())
    if "space" not in attrs:
        study.set_user_attr("env", settings.env)
        study.set_user_attr("space", wanted_space)
        study.set_user_attr("base_config", _jsonable(base.to_dict()))
    else:
        if attrs.get("env") != settings.env:
            raise SweepError(
                f"sweep '{settings.name}' in {settings.url} is for env '{attrs.get('env')}', "
                f"not '{settings.env}'; pick another --name"
            )
        if attrs["space"] != wanted_space:
            changed = sorted(
                k
                for k in set(attrs["space"]) | set(wanted_space)
                if attrs["space"].get(k) != wanted_space.get(k)
            )
            raise SweepError(
                f"sweep '{settings.name}' in {settings.url} was started with a different search space "
                f"(differs in {', '.join(changed)}); resume with the same config or pick another --name"
            )
    return study


def trial_config(base: Config, params: dict[str, Any], settings: SweepSettings, number: int) -> Config:
    cfg = base.copy()
    for key, value in params.items():
        set_key(cfg, key, value)
    cfg.train.seed = base.train.seed + number
    cfg.run.name = f"{settings.name}-trial{number:04d}"
    cfg.run.quiet = True
    share_threads(cfg, settings.workers)
    return cfg


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = {
        "finished": 0,
        "complete": 0,
        "pruned": 0,
        "running": 0,
        "waiting": 0,
        "failed": 0,
        "requeued": 0,
    }
    for t in trials:
        if t.state in finished_states():
            counts["finished"] += 1
            counts["complete" if t.state == TrialState.COMPLETE else "pruned"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
        elif t.state == TrialState.FAIL:
            counts["requeued" if t.user_attrs.get("stale") else "failed"] += 1
    return counts


class _FrontCache:
    """The (cost, score) front of every observation so far, refreshed every few seconds."""

    def __init__(self, study: optuna.Study, refresh: float = 5.0):
        self.study = study
        self.refresh = refresh
        self.loaded = -math.inf
        self.costs: list[float] = []
        self.scores: list[float] = []
        self.score_range = 0.0
        self.finished = 0

    def update(self, exclude: int) -> None:
        now = time.monotonic()
        if now - self.loaded < self.refresh:
            return
        self.loaded = now
        costs, scores, finished = [], [], 0
        for t in self.study.get_trials(deepcopy=False, states=finished_states()):
            if t.number == exclude:
                continue
            finished += 1
            for c, _, s in trial_points(t):
                costs.append(c)
                scores.append(s)
            if t.values and len(t.values) == 2:
                costs.append(t.values[1])
                scores.append(t.values[0])
        idx = pareto_front(costs, scores)
        self.costs = [costs[i] for i in idx]
        self.scores = [scores[i] for i in idx]
        self.score_range = (max(scores) - min(scores)) if scores else 0.0
        self.finished = finished


class _TrialMonitor:
    """The on_epoch callback: records the curve, stops runs early, watches for divergence."""

    def __init__(
        self,
        settings: SweepSettings,
        study: optuna.Study,
        trial: optuna.Trial,
        total_steps: int,
        on_tick: Callable[[], None] | None,
    ):
        self.settings = settings
        self.study = study
        self.trial = trial
        self.total_steps = total_steps
        self.on_tick = on_tick
        self.start = time.monotonic()
        self.curve: list[list[float]] = []
        self.last: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.cut_at_max_cost = False
        self.front = _FrontCache(study)
        self.published = time.monotonic()

    def __call__(self, metrics: dict[str, Any]) -> bool:
        elapsed = time.monotonic() - self.start
        self.last = dict(metrics)
        for name in ("loss", "policy_loss", "value_loss"):
            value = metrics.get(name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise Diverged(f"{name} became {value} at agent step {metrics.get('agent_steps')}")
        steps = float(metrics.get("agent_steps", 0))
        score = metrics.get("score")
        if isinstance(score, (int, float)) and math.isfinite(score):
            self.curve.append([elapsed, steps, float(score)])
        if time.monotonic() - self.published > 10.0:
            # Lets the progress view and other workers see curves of runs in flight.
            self.trial.set_user_attr("curve", self.curve)
            self.published = time.monotonic()
        if self.on_tick is not None:
            self.on_tick()
        if self.settings.max_cost is not None and elapsed >= self.settings.max_cost:
            self.cut_at_max_cost = True
            return False
        return not self._behind_front(elapsed, steps)

    def _behind_front(self, elapsed: float, steps: float) -> bool:
        margin = self.settings.early_stop_margin
        if margin is None or not self.curve or steps < self.settings.early_stop_after * self.total_steps:
            return False
        self.front.update(exclude=self.trial.number)
        if self.front.finished < self.settings.n_startup or self.front.score_range <= 0:
            return False
        score = recent_score(self.curve)
        best = front_score_at(self.front.costs, self.front.scores, elapsed)
        gap = best - score
        if gap > margin * self.front.score_range:
            self.stop_reason = (
                f"score {score:.4g} trailed the front ({best:.4g}) at {elapsed:.1f}s by {gap:.3g} "
                f"> {margin:g} x score range {self.front.score_range:.3g}"
            )
            return True
        return False

    def final_score(self) -> float:
        return recent_score(self.curve)


def run_trial(
    study: optuna.Study,
    space: SearchSpace,
    base: Config,
    settings: SweepSettings,
    train_fn: TrainFn,
    on_tick: Callable[[], None] | None = None,
) -> FrozenTrial:
    """Ask for one trial, train it, and tell the outcome. Returns the finished trial."""
    trial = study.ask(fixed_distributions=space.distributions())
    storage = study._storage
    trial_id = trial._trial_id
    params = dict(trial.params)
    monitor: _TrialMonitor | None = None
    try:
        with Heartbeat(storage, trial_id):
            cfg = trial_config(base, params, settings, trial.number)
            trial.set_user_attr("seed", cfg.train.seed)
            trial.set_user_attr("config", _jsonable(cfg.to_dict()))
            monitor = _TrialMonitor(settings, study, trial, cfg.train.total_steps, on_tick)
            train_fn(cfg, on_epoch=monitor)
            cost = time.monotonic() - monitor.start
            _record(trial, monitor)
            score = monitor.final_score()
            if monitor.stop_reason is not None:
                trial.set_user_attr("stopped_early", monitor.stop_reason)
                study.tell(trial, state=TrialState.PRUNED)
            elif not math.isfinite(score):
                trial.set_user_attr("error", "no episode finished during the run (score stayed NaN)")
                study.tell(trial, state=TrialState.FAIL)
            else:
                if monitor.cut_at_max_cost:
                    trial.set_user_attr("cut_at_max_cost", True)
                study.tell(trial, [score, cost])
    except (KeyboardInterrupt, SystemExit):
        # Interrupted, not broken: fail it and queue the same parameters for the next run.
        with contextlib.suppress(Exception):
            trial.set_user_attr("error", "interrupted (re-queued)")
            trial.set_user_attr("stale", True)
            study.tell(trial, state=TrialState.FAIL)
            requeue(study, storage.get_trial(trial_id))
        raise
    except Exception as e:
        if monitor is not None:
            _record(trial, monitor)
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        study.tell(trial, state=TrialState.FAIL)
    return storage.get_trial(trial_id)


def _record(trial: optuna.Trial, monitor: _TrialMonitor) -> None:
    trial.set_user_attr("curve", monitor.curve)
    # Failed runs have no values; the sampler charges them the seconds they ran.
    trial.set_user_attr("cost", time.monotonic() - monitor.start)
    steps = monitor.last.get("agent_steps")
    trial.set_user_attr("agent_steps", int(steps) if isinstance(steps, (int, float)) else None)
    sps = monitor.last.get("sps")
    trial.set_user_attr("sps", float(sps) if isinstance(sps, (int, float)) and math.isfinite(sps) else None)


def worker_loop(
    settings: SweepSettings,
    base: Config,
    train_fn: TrainFn | str | None = None,
    worker: int = 0,
    on_tick: Callable[[optuna.Study], None] | None = None,
    poll: float = 2.0,
) -> None:
    """Run trials until the sweep has `settings.trials` finished ones (shared with other workers)."""
    space = space_from_config(base)
    try:
        fn = resolve_train_fn(train_fn if train_fn is not None else settings.train_fn)
    except ValueError as e:
        raise SweepError(str(e)) from None
    study = open_study(settings, base, space, worker)
    tick = (lambda: on_tick(study)) if on_tick is not None else None
    while True:
        reap_stale_trials(study, settings.stale_after)
        counts = count_states(study.get_trials(deepcopy=False))
        if counts["finished"] >= settings.trials:
            return
        if counts["failed"] >= settings.failure_limit:
            raise SweepError(
                f"sweep '{settings.name}' stopped: {counts['failed']} trials failed (limit "
                f"{settings.failure_limit}); see the 'error' user attr of failed trials"
            )
        if counts["finished"] + counts["running"] >= settings.trials:
            # The last trials are running elsewhere; stay around in case one of them fails.
            if tick is not None:
                tick()
            time.sleep(poll)
            continue
        run_trial(study, space, base, settings, fn, tick)
        if tick is not None:
            tick()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so killing the sweep kills its workers."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_main(
    settings_data: dict, base_data: dict, worker: int, log_path: str, parent: int, train_fn: Any
) -> None:
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    # Training output goes to a per-worker log so the parent's live view stays readable.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        worker_loop(SweepSettings(**settings_data), from_dict(base_data), train_fn, worker=worker)
    except SweepError as e:
        print(f"worker {worker}: {e}", file=sys.stderr)
        sys.exit(3)


@dataclass
class SweepResult:
    name: str
    storage: str
    counts: dict[str, int] = field(default_factory=dict)
    front: list[FrozenTrial] = field(default_factory=list)


def run_sweep(
    settings: SweepSettings,
    base: Config,
    train_fn: TrainFn | str | None = None,
    on_tick: Callable[[optuna.Study], None] | None = None,
    poll: float = 1.0,
) -> SweepResult:
    """Run (or resume) a sweep: in this process with one worker, else in worker processes.

    With several workers `train_fn` must be importable ('module:function' or a picklable object).
    """
    from shoal.sweep.pareto import study_front

    space = space_from_config(base)
    study = open_study(settings, base, space)
    reaped = reap_stale_trials(study, settings.stale_after)
    if reaped:
        print(f"re-queued trials {reaped} left running by a stopped worker", file=sys.stderr)
    if settings.workers == 1:
        worker_loop(settings, base, train_fn, 0, on_tick)
    else:
        _run_processes(settings, base, train_fn, study, on_tick, poll)
    trials = study.get_trials(deepcopy=False)
    return SweepResult(settings.name, settings.url, count_states(trials), study_front(trials))


def _run_processes(
    settings: SweepSettings,
    base: Config,
    train_fn: TrainFn | str | None,
    study: optuna.Study,
    on_tick: Callable[[optuna.Study], None] | None,
    poll: float,
) -> None:
    data = asdict(settings)
    log_dir = Path(settings.sweep_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(settings.workers):
        log = log_dir / f"{settings.name}.worker{i}.log"
        p = ctx.Process(
            target=_worker_main,
            args=(data, base.to_dict(), i, str(log), os.getpid(), train_fn),
            name=f"sweep-worker-{i}",
        )
        try:
            p.start()
        except (AttributeError, TypeError, pickle.PicklingError) as e:
            raise SweepError(
                f"with --workers > 1 the train function must be importable ('module:function'): {e}"
            ) from None
        procs.append(p)
    try:
        while any(p.is_alive() for p in procs):
            if on_tick is not None:
                on_tick(study)
            time.sleep(poll)
    except KeyboardInterrupt:
        # Workers got the same Ctrl-C; give them a moment to re-queue their trials.
        deadline = time.monotonic() + 10.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        logs = ", ".join(str(log_dir / f"{settings.name}.worker{i}.log") for i, _ in failed)
        raise SweepError(f"worker(s) {[i for i, _ in failed]} exited with errors; see {logs}")
