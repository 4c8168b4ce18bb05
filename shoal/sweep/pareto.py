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


def collect_observations(
    trials: Sequence[FrozenTrial], space: SearchSpace, cost_key: str | None = None
) -> Observations:
    """Final results of complete trials, plus intermediate curve points of complete and stopped ones.

    A point reached after `s` agent steps is what a run of total length `s` would have scored
    (roughly: schedules differ), so when `cost_key` (train.total_steps) is swept the point is
    placed at that shorter length. Without a cost key curve points would all share one parameter
    vector, so only final results are used.
    """
    use_curve = cost_key is not None and cost_key in space
    cost_index = space.keys.index(cost_key) if use_curve else -1
    cost_param = space.by_key[cost_key] if use_curve else None
    xs, costs, scores, numbers, finals = [], [], [], [], []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        if any(k not in t.params for k in space.keys):
            continue
        base = np.clip(np.array(space.to_unit(t.params), dtype=float), 0.0, 1.0)
        if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 2:
            score, cost = float(t.values[0]), float(t.values[1])
            if math.isfinite(score) and math.isfinite(cost) and cost > 0:
                xs.append(base)
                costs.append(cost)
                scores.append(score)
                numbers.append(t.number)
                finals.append(True)
        if not use_curve:
            continue
        assert cost_param is not None
        for c, steps, s in trial_points(t):
            if steps <= 0:
                continue
            u = cost_param.to_unit(steps)
            if not 0.0 <= u <= 1.0:
                continue
            x = base.copy()
            x[cost_index] = u
            xs.append(x)
            costs.append(c)
            scores.append(s)
            numbers.append(t.number)
            finals.append(False)
    dims = len(space)
    return Observations(
        x=np.array(xs, dtype=float).reshape(-1, dims),
        cost=np.array(costs, dtype=float),
        score=np.array(scores, dtype=float),
        trial=np.array(numbers, dtype=int),
        final=np.array(finals, dtype=bool),
    )


def study_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials on the (cost, score) front of final values, cheapest first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2]
    idx = pareto_front([t.values[1] for t in done], [t.values[0] for t in done])
    return [done[i] for i in idx]
