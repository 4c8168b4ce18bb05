"""Pareto fronts of (cost, score) points and the observations a sweep has made so far."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from shoal.sweep.space import SearchSpace


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: lower cost AND higher score.

    Returned in order of increasing cost (so of increasing score). Of exact duplicates one is
    kept; non-finite points are ignored.
    """
    order = sorted(
        (i for i in range(len(costs)) if math.isfinite(costs[i]) and math.isfinite(scores[i])),
        key=lambda i: (costs[i], -scores[i]),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def front_score_at(front_costs: Sequence[float], front_scores: Sequence[float], cost: float) -> float:
    """The best score the front reaches at or below `cost` (-inf if it has nothing that cheap)."""
    best = -math.inf
    for c, s in zip(front_costs, front_scores, strict=True):
        if c <= cost:
            best = max(best, s)
    return best


def hypervolume_2d(
    costs: Sequence[float], scores: Sequence[float], ref_cost: float, ref_score: float
) -> float:
    """Area dominated by the points and bounded by (ref_cost, ref_score), which they should beat.

    Cost is minimized and score maximized; points at or worse than the reference add nothing.
    """
    idx = pareto_front(costs, scores)
    # Between two front points the better score available is the cheaper point's.
    area = 0.0
    best = ref_score
    prev_cost = None
    for i in idx:
        c, s = costs[i], scores[i]
        if c >= ref_cost or s <= ref_score:
            continue
        if prev_cost is not None:
            area += (c - prev_cost) * (best - ref_score)
        best, prev_cost = s, c
    if prev_cost is not None:
        area += (ref_cost - prev_cost) * (best - ref_score)
    return area


@dataclass
class Observations:
    """What the sweep has seen: unit parameter vectors with the (cost, score) they reached."""

    x: np.ndarray  # [n, dims] unit coordinates
    cost: np.ndarray  # [n] seconds
    score: np.ndarray  # [n]
    trial: np.ndarray  # [n] trial number each observation came from
    final: np.ndarray  # [n] bool: a trial's final result (not an intermediate curve point)
    # [n] bool: a failed run, scored as the worst score seen so the model learns to avoid it.
    failed: np.ndarray | None = None
    # [dims] bool: keys most trials set; the columns of the others are placeholders.
    modelled: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = np.zeros(len(self.cost), dtype=bool)
        if self.modelled is None:
            self.modelled = np.ones(self.x.shape[1], dtype=bool)

    def __len__(self) -> int:
        return len(self.cost)


def trial_points(trial: FrozenTrial) -> list[tuple[float, float, float]]:
    """(cost, agent_steps, score) points of one trial: its curve, ending with its final values."""
    points = []
    for point in trial.user_attrs.get("curve") or []:
        try:
            c, steps, s = (float(v) for v in point)
        except (TypeError, ValueError):
            continue
        if math.isfinite(c) and math.isfinite(s) and c > 0:
            points.append((c, steps, s))
    return points


def failed_run(trial: FrozenTrial) -> bool:
    """A run that failed on its own (diverged, raised, never scored), not one that was interrupted."""
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("stale")


def run_cost(trial: FrozenTrial) -> float:
    """Seconds a trial ran: its cost value, else its `cost` user attr, else its last curve point (or NaN)."""
    if trial.values is not None and len(trial.values) == 2:
        return float(trial.values[1])
    recorded = trial.user_attrs.get("cost")
    if isinstance(recorded, (int, float)) and math.isfinite(recorded) and recorded > 0:
        return float(recorded)
    points = trial_points(trial)
    return points[-1][0] if points else math.nan


def unset_keys(trials: Sequence[FrozenTrial], space: SearchSpace) -> list[str]:
    """Keys of the space that at most half of the finished or failed trials set.

    Such keys (e.g. added to the space after trials ran, or trials added by hand) are left out of
    the model, so those trials still count; once most trials set a key it is modelled again
    and the trials without it are left out instead.
    """
    usable = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or failed_run(t)]
    return [k for k in space.keys if usable and 2 * sum(k in t.params for t in usable) <= len(usable)]


class _Rows:
    """Observation rows as they are collected."""

    def __init__(self) -> None:
        self.xs: list[np.ndarray] = []
        self.costs: list[float] = []
        self.scores: list[float] = []
        self.numbers: list[int] = []
        self.finals: list[bool] = []
        self.failed: list[bool] = []

    def add(self, x: np.ndarray, cost: float, score: float, number: int, final: bool, failed: bool) -> None:
        self.xs.append(x)
        self.costs.append(cost)
        self.scores.append(score)
        self.numbers.append(number)
        self.finals.append(final)
        self.failed.append(failed)


def collect_observations(
    trials: Sequence[FrozenTrial], space: SearchSpace, cost_key: str | None = None
) -> Observations:
    """Final results of complete trials, intermediate curve points of complete and stopped ones,
    and failed runs.

    A point reached after `s` agent steps is what a run of total length `s` would have scored
    (roughly: schedules differ), so when `cost_key` (train.total_steps) is swept the point is
    placed at that shorter length; a run cut at --max-cost is placed at the steps it ran, not
    the steps it asked for. Without a cost key curve points would all share one parameter
    vector, so only final results are used. A failed run (diverged, raised, never scored) gets
    the worst score seen, at the cost it ran, so the model steers away from where runs fail.
    Keys that at most half of the trials set are left out of the model (their column is a
    placeholder), see :func:`unset_keys`.
    """
    use_curve = cost_key is not None and cost_key in space
    cost_index = space.keys.index(cost_key) if use_curve else -1
    missing = set(unset_keys(trials, space))
    modelled = np.array([k not in missing for k in space.keys], dtype=bool)
    rows = _Rows()
    failures: list[tuple[np.ndarray, float, int]] = []
    for t in trials:
        if any(k not in t.params for k in space.keys if k not in missing):
            continue
        values = {**_placeholders(space, missing), **t.params}
        base = np.clip(np.array(space.to_unit(values), dtype=float), 0.0, 1.0)
        if failed_run(t):
            failures.append((base, run_cost(t), t.number))
            continue
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        _add_final(rows, t, base, space, cost_index)
        if use_curve:
            _add_curve(rows, t, base, space, cost_index)
    _add_failures(rows, failures)
    dims = len(space)
    return Observations(
        x=np.array(rows.xs, dtype=float).reshape(-1, dims),
        cost=np.array(rows.costs, dtype=float),
        score=np.array(rows.scores, dtype=float),
        trial=np.array(rows.numbers, dtype=int),
        final=np.array(rows.finals, dtype=bool),
        failed=np.array(rows.failed, dtype=bool),
        modelled=modelled,
    )


def _placeholders(space: SearchSpace, missing: set[str]) -> dict[str, float]:
    # The middle of the range: any value will do, the model does not read these columns.
    return {k: space.by_key[k].from_unit(0.5) for k in missing}


def _add_final(rows: _Rows, t: FrozenTrial, base: np.ndarray, space: SearchSpace, cost_index: int) -> None:
    if t.state != TrialState.COMPLETE or t.values is None or len(t.values) != 2:
        return
    score, cost = float(t.values[0]), float(t.values[1])
    if not (math.isfinite(score) and math.isfinite(cost) and cost > 0):
        return
    x = base
    steps = t.user_attrs.get("agent_steps")
    ran = isinstance(steps, (int, float)) and steps > 0
    if cost_index >= 0 and t.user_attrs.get("cut_at_max_cost") and ran:
        # The run stopped early: what it scored is what a run of the steps it ran scores.
        x = base.copy()
        x[cost_index] = min(max(space.params[cost_index].to_unit(steps), 0.0), 1.0)
    rows.add(x, cost, score, t.number, True, False)


def _add_curve(rows: _Rows, t: FrozenTrial, base: np.ndarray, space: SearchSpace, cost_index: int) -> None:
    cost_param = space.params[cost_index]
    for c, steps, s in trial_points(t):
        if steps <= 0:
            continue
        u = cost_param.to_unit(steps)
        if not 0.0 <= u <= 1.0:
            continue
        x = base.copy()
        x[cost_index] = u
        rows.add(x, c, s, t.number, False, False)


def _add_failures(rows: _Rows, failures: list[tuple[np.ndarray, float, int]]) -> None:
    if not failures:
        return
    finite = [s for s in rows.scores if math.isfinite(s)]
    # Without any score yet there is nothing to call the worst, so failures wait for one.
    if not finite:
        return
    worst = min(finite)
    known = [c for c in rows.costs if math.isfinite(c) and c > 0]
    fallback = min(known) if known else 1.0
    for x, cost, number in failures:
        seconds = cost if math.isfinite(cost) and cost > 0 else fallback
        rows.add(x, seconds, worst, number, True, True)


def study_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials on the (cost, score) front of final values, cheapest first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2]
    idx = pareto_front([t.values[1] for t in done], [t.values[0] for t in done])
    return [done[i] for i in idx]
