"""Reading sweeps from Optuna storage (the contract of docs/architecture.md section 3).

A sweep NAME lives in the study ``NAME`` of either the journal file ``sweeps/<NAME>.journal``
(the default) or an Optuna RDB URL; its seed re-runs live in the study ``NAME:reproduce`` of the
same storage. Everything here only reads, except :func:`open_storage` with ``create=True``,
which `shoal reproduce` uses to write the re-runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from shoal.sweep.storage import SWEEP_DIR, is_url, journal_path
from shoal.sweep.storage import open_storage as open_rdb_storage

REPRODUCE_SUFFIX = ":reproduce"

# Columns of every trials frame, before the parameter columns (whose names are dotted keys).
BASE_COLUMNS = ["trial", "score", "cost", "steps", "sps", "seed", "curve"]


class SweepNotFoundError(LookupError):
    """The requested sweep does not exist; the message lists the sweeps that do."""


def describe_storage(name: str, storage: str | None, sweeps_dir: str | Path = SWEEP_DIR) -> str:
    """Human-readable location of a sweep's storage, for messages and reports."""
    if storage is None:
        return str(journal_path(name, sweeps_dir))
    return storage


def open_storage(
    name: str,
    storage: str | None = None,
    sweeps_dir: str | Path = SWEEP_DIR,
    create: bool = False,
) -> BaseStorage | None:
    """The Optuna storage holding sweep NAME, or None when its journal file does not exist.

    ``storage`` is an RDB URL (``sqlite:///x.db``, ``postgresql://...``) or the path of a journal
    file; None means ``sweeps/<NAME>.journal``. Journal files are never created unless ``create``
    is set, because JournalFileBackend creates any path it is given and a typo in a sweep name
    must not leave an empty journal behind.
    """
    if storage is not None and is_url(storage):
        # The sweep's own opener: it picks the PostgreSQL driver that is installed.
        return open_rdb_storage(storage)
    path = Path(storage) if storage is not None else journal_path(name, sweeps_dir)
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def list_sweeps(storage: str | None = None, sweeps_dir: str | Path = SWEEP_DIR) -> list[tuple[str, str]]:
    """(sweep name, where it is stored) for every sweep found.

    Scans every ``<sweeps_dir>/*.journal`` and, when given, the studies of ``storage``.
    Reproduction studies (``NAME:reproduce``) are not sweeps of their own and are left out.
    """
    found: list[tuple[str, str]] = []
    sources: list[tuple[BaseStorage, str]] = []
    directory = Path(sweeps_dir)
    if directory.is_dir():
        for path in sorted(directory.glob("*.journal")):
            if path.stat().st_size == 0:
                continue
            sources.append((JournalStorage(JournalFileBackend(str(path))), str(path)))
    if storage is not None:
        opened = open_storage("", storage, sweeps_dir)
        if opened is not None:
            sources.append((opened, storage))
    seen: set[tuple[str, str]] = set()
    for opened, where in sources:
        try:
            names = optuna.get_all_study_names(opened)
        except Exception as e:  # a corrupt journal must not hide the other sweeps
            found.append((f"<unreadable: {e}>", where))
            continue
        for study_name in sorted(names):
            if study_name.endswith(REPRODUCE_SUFFIX) or (study_name, where) in seen:
                continue
            seen.add((study_name, where))
            found.append((study_name, where))
    return found


def _not_found_message(name: str, storage: str | None, sweeps_dir: str | Path) -> str:
    where = describe_storage(name, storage, sweeps_dir)
    existing = list_sweeps(storage, sweeps_dir)
    if existing:
        listing = "\n".join(f"  {n}  ({w})" for n, w in existing)
        return f"no sweep named '{name}' in {where}. Existing sweeps:\n{listing}"
    scanned = f"{sweeps_dir}/*.journal" + (f" and {storage}" if storage else "")
    return f"no sweep named '{name}' in {where}, and no sweeps were found ({scanned} scanned)."


def _open_study(
    name: str, storage: str | None, sweeps_dir: str | Path
) -> tuple[optuna.Study, BaseStorage, list[str]]:
    opened = open_storage(name, storage, sweeps_dir)
    names = optuna.get_all_study_names(opened) if opened is not None else []
    if opened is None or name not in names:
        raise SweepNotFoundError(_not_found_message(name, storage, sweeps_dir))
    return optuna.load_study(study_name=name, storage=opened), opened, names


def load_study(name: str, storage: str | None = None, sweeps_dir: str | Path = SWEEP_DIR) -> optuna.Study:
    """The Optuna study of sweep NAME; SweepNotFoundError (listing existing sweeps) if absent."""
    return _open_study(name, storage, sweeps_dir)[0]


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _curve(trial: FrozenTrial) -> list[tuple[float, float, float]]:
    raw = trial.user_attrs.get("curve") or []
    points = []
    for point in raw:
        if isinstance(point, (list, tuple)) and len(point) >= 3:
            points.append((_finite(point[0]), _finite(point[1]), _finite(point[2])))
    return points


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One completed trial as a flat row: score, cost, steps, sps, seed, curve and its params."""
    values = trial.values or []
    score = _finite(values[0]) if len(values) > 0 else math.nan
    cost = _finite(values[1]) if len(values) > 1 else math.nan
    curve = _curve(trial)
    steps = _finite(trial.user_attrs.get("agent_steps"))
    if math.isnan(steps) and curve:
        steps = curve[-1][1]
    sps = _finite(trial.user_attrs.get("sps"))
    if math.isnan(sps) and cost > 0 and not math.isnan(steps):
        sps = steps / cost
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = (trial.user_attrs.get("config") or {}).get("train", {}).get("seed")
    row: dict[str, Any] = {
        "trial": trial.number,
        "score": score,
        "cost": cost,
        "steps": steps,
        "sps": sps,
        "seed": seed,
        "curve": curve,
    }
    row.update(trial.params)
    return row


def trials_frame(trials: list[FrozenTrial], param_names: list[str] | None = None) -> pd.DataFrame:
    """Completed trials as a DataFrame with BASE_COLUMNS then one column per parameter."""
    rows = [trial_row(t) for t in trials if t.state == TrialState.COMPLETE]
    names = param_names if param_names is not None else sorted({k for t in trials for k in t.params})
    frame = pd.DataFrame(rows, columns=BASE_COLUMNS + names)
    for column in ("score", "cost", "steps", "sps"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


@dataclass
class Sweep:
    """A loaded sweep: its completed trials as a frame plus what the study says about itself."""

    name: str
    where: str
    study: optuna.Study
    trials: pd.DataFrame
    param_names: list[str]
    distributions: dict[str, BaseDistribution]
    counts: dict[str, int]
    base_config: dict[str, Any] = field(default_factory=dict)
    env: str = ""
    space: dict[str, Any] = field(default_factory=dict)
    reproductions: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def empty(self) -> bool:
        return self.trials.empty

    def counts_text(self) -> str:
        order = ["COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL"]
        ranked = sorted(self.counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        parts = [f"{n} {state.lower()}" for state, n in ranked if n]
        return ", ".join(parts) if parts else "no trials"

    def empty_message(self) -> str:
        return (
            f"sweep '{self.name}' ({self.where}) has no completed trials yet "
            f"({self.counts_text()}); nothing to analyze."
        )

    def trial_config(self, number: int) -> dict[str, Any]:
        """The full config dict a trial ran with (user attr `config`, else base_config + params)."""
        matches = [t for t in self.study.get_trials(deepcopy=False) if t.number == number]
        if not matches:
            raise KeyError(f"sweep '{self.name}' has no trial {number}")
        trial = matches[0]
        config = trial.user_attrs.get("config")
        if isinstance(config, dict) and config:
            return config
        from shoal.core.config import from_dict, load_config, set_key

        cfg = from_dict(self.base_config) if self.base_config else load_config(self.env or None)
        for key, value in trial.params.items():
            set_key(cfg, key, value)
        return cfg.to_dict()


def config_key(config: Any) -> str:
    """A stable fingerprint of a config, so that re-runs of one config file group together."""
    if not isinstance(config, dict):
        return ""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reproduction_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """Completed seed re-runs: trial, source_trial, seed, score, cost, steps, sps, curve."""
    rows = []
    for trial in trials:
        if trial.state != TrialState.COMPLETE:
            continue
        row = trial_row(trial)
        source = trial.user_attrs.get("source_trial", -1)
        row = {k: row[k] for k in BASE_COLUMNS}
        row["source_trial"] = int(source) if source is not None else -1
        row["config_key"] = trial.user_attrs.get("source_key", "")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=BASE_COLUMNS + ["source_trial", "config_key"])
    for column in ("score", "cost", "steps", "sps"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def load_sweep(name: str, storage: str | None = None, sweeps_dir: str | Path = SWEEP_DIR) -> Sweep:
    """Load sweep NAME (and its `NAME:reproduce` study, when present).

    Raises SweepNotFoundError, whose message lists the sweeps that exist, when NAME is absent.
    Failed, pruned and running trials are counted but left out of ``Sweep.trials``.
    """
    study, opened, study_names = _open_study(name, storage, sweeps_dir)
    all_trials = study.get_trials(deepcopy=False)
    counts = {state.name: 0 for state in TrialState}
    for trial in all_trials:
        counts[trial.state.name] += 1
    completed = [t for t in all_trials if t.state == TrialState.COMPLETE]
    param_names = sorted({k for t in completed for k in t.params})
    distributions: dict[str, BaseDistribution] = {}
    for trial in completed:
        for key, dist in trial.distributions.items():
            distributions.setdefault(key, dist)
    attrs = study.user_attrs
    base_config = attrs.get("base_config") if isinstance(attrs.get("base_config"), dict) else {}
    reproductions = pd.DataFrame(columns=BASE_COLUMNS + ["source_trial", "config_key"])
    repro_name = name + REPRODUCE_SUFFIX
    if repro_name in study_names:
        repro = optuna.load_study(study_name=repro_name, storage=opened)
        reproductions = reproduction_frame(repro.get_trials(deepcopy=False))
    return Sweep(
        name=name,
        where=describe_storage(name, storage, sweeps_dir),
        study=study,
        trials=trials_frame(completed, param_names),
        param_names=param_names,
        distributions=distributions,
        counts={k: v for k, v in counts.items() if v},
        base_config=base_config or {},
        env=str(attrs.get("env", "")),
        space=attrs.get("space") if isinstance(attrs.get("space"), dict) else {},
        reproductions=reproductions,
    )
