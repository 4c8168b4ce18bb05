"""`shoal reproduce`: re-run the best configs of a sweep over fresh seeds into study NAME:reproduce."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from shoal.analysis import stats
from shoal.analysis.sweeps import REPRODUCE_SUFFIX, Sweep, config_key, open_storage
from shoal.core.checks import check_positive_int
from shoal.sweep.runner import TrainFn, recent_score, resolve_train_fn, share_threads
from shoal.sweep.storage import SWEEP_DIR

FIRST_SEED = 1000  # re-run seeds start here, far from the small seeds sweeps usually use


@dataclass
class Job:
    source_trial: int  # negative for a config file: -1, -2, ... one id per distinct config
    seed: int
    config: dict[str, Any]
    original_score: float = math.nan


@dataclass
class Outcome:
    job: Job
    score: float
    cost: float
    agent_steps: float
    sps: float
    curve: list[list[float]]
    config: dict[str, Any]
    error: str = ""


def pick_seeds(count: int, used: set[int]) -> list[int]:
    """`count` seeds from FIRST_SEED upward that are not in `used`."""
    seeds: list[int] = []
    candidate = FIRST_SEED
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def load_config_file(path: str | Path, sweep: Sweep) -> dict[str, Any]:
    """A config to re-run: a config.json of a run, or a TOML file layered on the sweep's base config."""
    from shoal.core.config import from_dict, load_config, load_toml, merge_dict

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"config file not found: {path} (expected a .toml config or a run's config.json)"
        )
    if path.suffix == ".json":
        return from_dict(json.loads(path.read_text())).to_dict()
    if sweep.base_config:
        cfg = from_dict(sweep.base_config)
        merge_dict(cfg, load_toml(path), str(path))
        return cfg.to_dict()
    return load_config(sweep.env or None, config_file=path).to_dict()


def plan_jobs(
    sweep: Sweep,
    top: int,
    seeds: int,
    max_cost: float | None = None,
    config_file: str | Path | None = None,
) -> list[Job]:
    """Jobs for the top configs (by score, under max_cost when given) and an optional config file.

    Seeds differ from each config's original seed and from seeds it was already re-run with, so
    running reproduce again adds evidence instead of repeating it.
    """
    check_positive_int("seeds", seeds)
    if top < 0:
        raise ValueError(f"--top must be 0 or more, got {top}")
    sources: list[tuple[int, dict[str, Any], float, int | None]] = []
    if top:
        best = stats.top_n(sweep.trials, top, max_cost)
        if best.empty:
            where = f" under {max_cost:g} s" if max_cost is not None else ""
            raise ValueError(f"sweep '{sweep.name}' has no completed trial with a score{where} to reproduce")
        for _, row in best.iterrows():
            number = int(row["trial"])
            seed = row["seed"]
            original_seed = int(seed) if seed is not None and not _nan(seed) else None
            sources.append((number, sweep.trial_config(number), float(row["score"]), original_seed))
    repro = sweep.reproductions
    if config_file is not None:
        config = load_config_file(config_file, sweep)
        source = config_file_source(repro, config)
        sources.append((source, config, math.nan, config.get("train", {}).get("seed")))
    if not sources:
        raise ValueError("nothing to reproduce: give --top K (K >= 1) and/or --config FILE")
    jobs = []
    for source, config, score, original_seed in sources:
        used = set()
        if original_seed is not None:
            used.add(int(original_seed))
        if not repro.empty:
            used.update(int(s) for s in repro.loc[repro["source_trial"] == source, "seed"].dropna())
        for seed in pick_seeds(seeds, used):
            jobs.append(Job(source, seed, config, score))
    return jobs


def config_file_source(reproductions: pd.DataFrame, config: dict[str, Any]) -> int:
    """The negative source id of a config file: the id its earlier re-runs have (same config),
    else the next unused one (-1, -2, ...), so different files are never pooled."""
    files = reproductions[reproductions["source_trial"] < 0] if not reproductions.empty else reproductions
    if files.empty:
        return -1
    same = files.loc[files["config_key"] == config_key(config), "source_trial"]
    if not same.empty:
        return int(same.iloc[0])
    return int(files["source_trial"].min()) - 1


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def job_config(job: Job, sweep_name: str, workers: int) -> Any:
    """The Config of one re-run: the source config with the new seed and its own run name."""
    from shoal.core.config import from_dict

    cfg = from_dict(job.config)
    cfg.train.seed = job.seed
    if job.source_trial >= 0:
        source = f"t{job.source_trial}"
    else:
        source = "config" if job.source_trial == -1 else f"config{-job.source_trial}"
    cfg.run.name = f"{sweep_name}-reproduce-{source}-s{job.seed}"
    if getattr(cfg.run, "resume", ""):
        cfg.run.resume = ""  # a re-run must start fresh, not continue the original run's checkpoint
    if workers > 1:
        share_threads(cfg, workers)
        cfg.run.quiet = True  # parallel dashboards would overwrite each other
    return cfg


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def run_job(job: Job, sweep_name: str, workers: int, train_fn: TrainFn | None = None) -> Outcome:
    """Train one re-run and collect its values and curve; errors become an Outcome with `error`.

    Values are measured as `shoal sweep` measures them, so re-runs compare with the sweep's
    scores: cost is the wall-clock seconds of the whole train() call, the curve holds
    [seconds since start, agent steps, score] for epochs with a finite score, and the score is
    the mean of the last SCORE_WINDOW curve scores.
    """
    curve: list[list[float]] = []
    last: dict[str, Any] = {}
    start = time.monotonic()

    def on_epoch(metrics: dict[str, Any]) -> bool:
        last.update(metrics)
        score = _number(metrics.get("score"))
        if math.isfinite(score):
            curve.append([time.monotonic() - start, _number(metrics.get("agent_steps")), score])
        return True

    config = dict(job.config)
    try:
        cfg = job_config(job, sweep_name, workers)
        config = cfg.to_dict()
        start = time.monotonic()
        result = resolve_train_fn(train_fn)(cfg, on_epoch=on_epoch)
        cost = time.monotonic() - start
        metrics = dict(getattr(result, "metrics", None) or last)
        steps = _number(metrics.get("agent_steps"))
        sps = _number(metrics.get("sps"))
        seconds = _number(metrics.get("wall_time", cost))
        if not math.isfinite(sps) and math.isfinite(steps) and seconds > 0:
            sps = steps / seconds
        score = recent_score(curve) if curve else _number(metrics.get("score"))
        error = "" if math.isfinite(score) else "no episode finished during the run (score stayed NaN)"
        return Outcome(job, score, cost, steps, sps, curve, config, error)
    except Exception as e:
        return Outcome(
            job,
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            curve,
            config,
            f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}",
        )


def _json_safe(curve: list[list[float]]) -> list[list[float | None]]:
    # Optuna stores user attrs as JSON, where NaN is not portable (RDB backends reject it).
    return [[v if math.isfinite(v) else None for v in point] for point in curve]


def record(study: optuna.Study, outcome: Outcome) -> optuna.trial.FrozenTrial:
    """Store one re-run as a trial of NAME:reproduce (COMPLETE, or FAIL with user attr `error`)."""
    job = outcome.job
    attrs: dict[str, Any] = {
        "source_trial": job.source_trial,
        "source_key": config_key(job.config),
        "seed": job.seed,
        "config": outcome.config,
        "curve": _json_safe(outcome.curve),
        "agent_steps": outcome.agent_steps if math.isfinite(outcome.agent_steps) else None,
        "sps": outcome.sps if math.isfinite(outcome.sps) else None,
    }
    if outcome.error:
        attrs["error"] = outcome.error
        trial = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs)
    else:
        trial = optuna.trial.create_trial(values=[outcome.score, outcome.cost], user_attrs=attrs)
    study.add_trial(trial)
    return trial


def reproduce(
    sweep: Sweep,
    jobs: list[Job],
    storage: str | None = None,
    sweeps_dir: str | Path = SWEEP_DIR,
    workers: int = 1,
    train_fn: TrainFn | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run the jobs (in `workers` processes when > 1) and record each as it finishes."""
    check_positive_int("workers", workers)
    opened = open_storage(sweep.name, storage, sweeps_dir, create=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what is being created
    try:
        study = optuna.create_study(
            study_name=sweep.name + REPRODUCE_SUFFIX,
            storage=opened,
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.set_user_attr("source_study", sweep.name)
    outcomes: list[Outcome] = []

    def finish(outcome: Outcome) -> None:
        record(study, outcome)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    if workers == 1:
        for job in jobs:
            finish(run_job(job, sweep.name, 1, train_fn))
        return outcomes
    # Spawned (not forked) workers: forking a process that has torch threads running can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job, sweep.name, workers, train_fn): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as e:  # the worker process itself died (or the job could not be sent)
                job = futures[future]
                nan = math.nan
                outcome = Outcome(
                    job, nan, nan, nan, nan, [], job.config, f"worker failed: {type(e).__name__}: {e}"
                )
            finish(outcome)
    return outcomes
