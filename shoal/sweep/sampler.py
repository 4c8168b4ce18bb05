"""The cost-aware Pareto sampler, and the Optuna samplers offered as alternatives.

The sampler traces the whole (cost, score) front instead of chasing one best score: each
suggestion draws a target cost, then picks the configuration predicted to score best at
about that cost. Two Gaussian processes over the unit parameter coordinates model score and
log-cost; intermediate points of each run's curve count as observations of shorter runs.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import qmc
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import (
    ConstantKernel,
    Exponentiation,
    GenericKernelMixin,
    Hyperparameter,
    Kernel,
    Matern,
    WhiteKernel,
)

from shoal.sweep.pareto import Observations, collect_observations, pareto_front
from shoal.sweep.space import COST_KEY, SearchSpace

SAMPLERS = ("pareto", "random", "tpe", "gp")
CURVE_WEIGHTINGS = ("trial", "independent")


class _ParamColumns(Exponentiation):
    """A kernel on the first `dims` columns only (the last column holds the run id)."""

    def __init__(self, kernel: Kernel, exponent: float = 1.0, dims: int = 1):
        super().__init__(kernel, exponent)
        self.dims = dims

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        # Exponentiation lists its own arguments only; clones must keep `dims`.
        return {**super().get_params(deep), "dims": self.dims}

    def __call__(self, X: np.ndarray, Y: np.ndarray | None = None, eval_gradient: bool = False) -> Any:
        return super().__call__(X[:, : self.dims], None if Y is None else Y[:, : self.dims], eval_gradient)

    def diag(self, X: np.ndarray) -> np.ndarray:
        return super().diag(X[:, : self.dims])


class _SameRun(GenericKernelMixin, Kernel):
    """`level` between points of one run (same id in the last column), else 0.

    The points of one run's curve share its seed's luck: a random offset per run, whose
    variance is fitted like any other hyperparameter.
    """

    def __init__(self, level: float = 0.1, level_bounds: tuple[float, float] = (1e-5, 1.0)):
        self.level = level
        self.level_bounds = level_bounds

    @property
    def hyperparameter_level(self) -> Hyperparameter:
        return Hyperparameter("level", "numeric", self.level_bounds)

    def __call__(self, X: np.ndarray, Y: np.ndarray | None = None, eval_gradient: bool = False) -> Any:
        a = X[:, -1]
        b = a if Y is None else Y[:, -1]
        same = (a[:, None] == b[None, :]).astype(float)
        K = self.level * same
        if not eval_gradient:
            return K
        if self.hyperparameter_level.fixed:
            return K, np.empty((len(a), len(a), 0))
        return K, K[:, :, None]  # dK / d log(level)

    def diag(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.level)

    def is_stationary(self) -> bool:
        return False


def _held_out_runs(kernel: Kernel, x: np.ndarray, y: np.ndarray) -> float:
    """Log density of each run's points predicted from the other runs, summed over runs.

    What the sampler asks of the model is a new run's score, so this is how kernels compete
    (the run id is the last column of x).
    """
    K = kernel(x)
    K[np.diag_indices_from(K)] += 1e-8
    inv = np.linalg.inv(K)
    alpha = inv @ y
    total = 0.0
    for run in np.unique(x[:, -1]):
        b = np.flatnonzero(x[:, -1] == run)
        cov = np.linalg.inv(inv[np.ix_(b, b)])
        _, logdet = np.linalg.slogdet(2 * np.pi * cov)
        total += -0.5 * float(alpha[b] @ cov @ alpha[b]) - 0.5 * logdet
    return total


class _Model:
    """A GP on standardized targets.

    Fitting kernel hyperparameters is the slow part (cubic in points, times the dimensions),
    so they are fitted on a subsample, and only again after the data grew by half or every
    few calls; the GP itself is then conditioned on all points with the kernel held fixed.

    With `run_offsets` the inputs carry a run id as an extra last column and the kernel adds
    a random offset per run (see _SameRun). Fitted jointly, that offset can explain every
    difference between runs (each run has its own settings, so its offset and the function
    there are confounded) and the model then learns nothing about the settings. So the
    function is fitted first as if all points were independent, and the offset variance
    (with the point noise) afterwards, with the function held fixed, on whole runs: it only
    takes what the function leaves shared by the points of one run.
    """

    def __init__(
        self,
        dims: int,
        seed: int,
        linear_mean: bool = False,
        hyper_points: int = 64,
        refit_every: int = 5,
        run_offsets: bool = False,
    ):
        signal: Kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            length_scale=np.full(dims, 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5
        )
        # Points taken as independent; with run_offsets, `full` adds the offsets to it.
        self.kernel: Kernel = signal + WhiteKernel(0.05, (1e-5, 1.0))
        self.full: Kernel | None = None
        self.dims = dims
        self.run_offsets = run_offsets
        self.rng = np.random.default_rng(seed)
        # Its own stream, so the function's fit draws the same subsamples with or without offsets.
        self.run_rng = np.random.default_rng([seed, 1])
        self.linear_mean = linear_mean
        self.coef = np.zeros(dims + 1)
        self.hyper_points = hyper_points
        self.refit_every = refit_every
        self.calls = 0
        self.fitted_on = 0
        self.gp: GaussianProcessRegressor | None = None
        self.mean = 0.0
        self.std = 1.0

    def _trend(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef[:-1] + self.coef[-1]

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.linear_mean:
            # A ridge-regularized linear trend extrapolates (log-cost keeps growing with run
            # length beyond the runs seen so far, where a GP alone falls back to the mean).
            design = np.hstack([x, np.ones((len(x), 1))])
            ridge = 1e-3 * np.eye(design.shape[1])
            ridge[-1, -1] = 0.0
            self.coef = np.linalg.solve(design.T @ design + ridge, design.T @ y)
            y = y - self._trend(x)
        self.mean = float(y.mean())
        self.std = float(y.std()) or 1.0
        target = (y - self.mean) / self.std
        self.calls += 1
        n = len(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.gp is None or n >= 1.5 * self.fitted_on or self.calls % self.refit_every == 0:
                sub = np.arange(n)
                if n > self.hyper_points:
                    sub = self.rng.choice(n, size=self.hyper_points, replace=False)
                params = x[:, : self.dims]
                tuned = GaussianProcessRegressor(self.kernel, normalize_y=False).fit(params[sub], target[sub])
                self.kernel = tuned.kernel_
                if self.run_offsets:
                    self.full = self._fit_offsets(x, target)
                self.fitted_on = n
            kernel = self.full if self.full is not None else self.kernel
            self.gp = GaussianProcessRegressor(kernel, normalize_y=False, optimizer=None).fit(x, target)

    def _fit_offsets(self, x: np.ndarray, target: np.ndarray) -> Kernel:
        """The kernel on [params, run id]: with run offsets if they predict held-out runs better."""
        rows = self._whole_runs(x[:, -1])
        x, target = x[rows], target[rows]
        plain = _ParamColumns(self.kernel.k1, dims=self.dims) + self.kernel.k2
        # Started from the function fitted without offsets, with a small offset variance.
        start = _ParamColumns(clone(self.kernel.k1), dims=self.dims) + _SameRun(0.01) + clone(self.kernel.k2)
        joint = GaussianProcessRegressor(start, normalize_y=False).fit(x, target).kernel_
        if _held_out_runs(joint, x, target) > _held_out_runs(plain, x, target):
            return joint
        return plain

    def _whole_runs(self, runs: np.ndarray) -> np.ndarray:
        """Rows of randomly chosen runs, all points of each, up to about `hyper_points` rows.

        Whole runs, so that points sharing an offset are seen together; only two
        hyperparameters are fitted on them, so twice the points cost little.
        """
        _, which, counts = np.unique(runs, return_inverse=True, return_counts=True)
        order = self.run_rng.permutation(len(counts))
        taken = max(1, int(np.searchsorted(np.cumsum(counts[order]), 2 * self.hyper_points, side="right")))
        return np.flatnonzero(np.isin(which, order[:taken]))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.gp is not None
        mu, sd = self.gp.predict(x, return_std=True)
        mu = mu * self.std + self.mean
        if self.linear_mean:
            mu = mu + self._trend(x)
        return mu, sd * self.std


class ParetoSampler(BaseSampler):
    """Cost-aware sampler over a SearchSpace (values = [score, cost_seconds]).

    Args:
        space: the search space; every suggestion covers all of it (relative sampling).
        seed: seeds all random draws (each worker of a sweep gets its own).
        sobol_seed: seeds the start-up sequence, shared by all workers (default: `seed` if
            given, else derived from the study name).
        n_startup: the first trials are a scrambled Sobol sequence (trial 0: the `center`).
        cost_key: the run-length key; start-up trials keep it in the cheapest `startup_cost`
            fraction of its range, and curve points are observations at shorter lengths.
        center: values tried first (the base config), clipped into the space.
        max_cost: never aim for runs predicted to cost more than this many seconds.
        num_candidates: candidate configurations scored per suggestion.
        random_fraction: share of candidates drawn uniformly instead of perturbing the front.
        perturb_scale: standard deviation of perturbations, in unit coordinates (per-key
            `scale` overrides it).
        ucb_beta: how much predicted uncertainty counts (score mean + beta * std).
        max_observations: cap on GP training points (final results are always kept).
        curve_weighting: "trial" (default) models the curve points of one run as what they are:
            points sharing that run's random offset (its seed's luck), where that predicts
            held-out runs better (see _Model); "independent" counts each as a result of its own
            (overconfident where runs' luck differs; for comparison).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        sobol_seed: int | None = None,
        n_startup: int = 8,
        cost_key: str | None = COST_KEY,
        startup_cost: float = 0.3,
        center: dict[str, Any] | None = None,
        max_cost: float | None = None,
        num_candidates: int = 512,
        random_fraction: float = 0.2,
        perturb_scale: float = 0.1,
        ucb_beta: float = 1.0,
        max_observations: int = 400,
        curve_weighting: str = "trial",
    ):
        if curve_weighting not in CURVE_WEIGHTINGS:
            raise ValueError(f"curve_weighting must be one of {CURVE_WEIGHTINGS}, got {curve_weighting!r}")
        self.space = space
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self.sobol_seed = sobol_seed if sobol_seed is not None else seed
        self.n_startup = n_startup
        self.cost_key = cost_key if cost_key in space else None
        self.startup_cost = startup_cost
        self.center = center
        self.max_cost = max_cost
        self.num_candidates = num_candidates
        self.random_fraction = random_fraction
        self.scales = np.array([p.scale or perturb_scale for p in space.params])
        self.ucb_beta = ucb_beta
        self.max_observations = max_observations
        self.curve_weighting = curve_weighting
        self._warned_unset: set[str] = set()
        self._rng = np.random.default_rng(self.seed)
        self._models: dict[int, tuple[_Model, _Model]] = {}
        self._fallback = optuna.samplers.RandomSampler(seed=self.seed)
        # For tests and logs: why the last suggestion was made.
        self.last_info: dict[str, Any] = {}

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Only reached for parameters outside the space (e.g. suggested by hand).
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        # Re-queued trials carry their parameters already.
        if trial.system_attrs.get("fixed_params"):
            return {}
        trials = study.get_trials(deepcopy=False)
        obs = collect_observations(trials, self.space, self.cost_key)
        self._warn_unset(obs)
        results = int((obs.final & ~obs.failed).sum()) if len(obs) else 0
        if trial.number < self.n_startup or results < 3 or len(obs) < 5:
            unit = self.startup_point(trial.number, study.study_name)
            self.last_info = {"kind": "startup"}
        else:
            unit = self.suggest_unit(obs, self.pending_points(trials, trial.number))
        values = self.space.from_unit(unit)
        return {k: v for k, v in values.items() if k in search_space}

    def _warn_unset(self, obs: Observations) -> None:
        assert obs.modelled is not None
        unset = [k for k, used in zip(self.space.keys, obs.modelled, strict=True) if not used]
        new = [k for k in unset if k not in self._warned_unset]
        if new:
            self._warned_unset.update(new)
            warnings.warn(
                f"most trials of this sweep do not set {', '.join(new)}: the sampler models the "
                "trials on the keys they have and draws these at random",
                stacklevel=3,
            )

    def pending_points(self, trials: Sequence[FrozenTrial], exclude: int) -> np.ndarray:
        """Unit vectors of trials running elsewhere (other workers), so suggestions avoid them."""
        points = []
        for t in trials:
            if t.state != TrialState.RUNNING or t.number == exclude:
                continue
            if all(k in t.params for k in self.space.keys):
                points.append(np.clip(self.space.to_unit(t.params), 0.0, 1.0))
        return np.array(points, dtype=float).reshape(-1, len(self.space))

    def startup_point(self, index: int, study_name: str = "") -> np.ndarray:
        """Trial 0: the center; then scrambled Sobol points with cheap run lengths.

        Workers of one sweep share the Sobol sequence (seeded by `sobol_seed`, else by the
        study name) and take the points of their trials' numbers, so together they cover it.
        """
        if index == 0 and self.center is not None:
            values = {
                p.key: p.mean if p.mean is not None else self.center.get(p.key) for p in self.space.params
            }
            # A base value outside the range (or the log domain, e.g. a 0 that disables a clip)
            # is replaced by the nearest bound.
            unit = np.array(
                [
                    p.to_unit(min(max(v, p.low), p.high)) if isinstance(v, (int, float)) else 0.5
                    for p, v in zip(self.space.params, values.values(), strict=True)
                ]
            )
        else:
            seed = self.sobol_seed if self.sobol_seed is not None else zlib.crc32(study_name.encode())
            sobol = qmc.Sobol(len(self.space), scramble=True, seed=seed)
            count = 1 << max(1, math.ceil(math.log2(index + 1)))
            unit = sobol.random(count)[index % count]
        if self.cost_key is not None:
            i = self.space.keys.index(self.cost_key)
            unit = unit.copy()
            unit[i] = unit[i] * self.startup_cost
        return unit

    def _subsample(self, obs: Observations) -> np.ndarray:
        idx = np.arange(len(obs))
        if len(idx) <= self.max_observations:
            return idx
        finals = idx[obs.final]
        rest = idx[~obs.final]
        room = max(self.max_observations - len(finals), 0)
        keep = self._rng.choice(rest, size=min(room, len(rest)), replace=False)
        chosen = np.concatenate([finals, keep])
        return chosen[-self.max_observations :] if len(chosen) > self.max_observations else chosen

    def candidates(self, obs: Observations, front: Sequence[int]) -> np.ndarray:
        """Perturbations of front points, plus uniform random points."""
        dims = len(self.space)
        n_random = int(round(self.num_candidates * self.random_fraction))
        n_perturb = self.num_candidates - n_random
        parents = obs.x[self._rng.choice(np.asarray(front), size=n_perturb)]
        # Varying the perturbation size per candidate mixes local refinement with longer jumps.
        size = self._rng.choice([0.5, 1.0, 2.0], size=(n_perturb, 1))
        perturbed = parents + self._rng.normal(size=(n_perturb, dims)) * self.scales * size
        uniform = self._rng.random((n_random, dims))
        return np.clip(np.concatenate([perturbed, uniform]), 0.0, 1.0)

    def _models_for(self, dims: int) -> tuple[_Model, _Model]:
        # One pair per number of modelled keys: a kernel's length scales are per dimension.
        if dims not in self._models:
            runs = self.curve_weighting == "trial"
            score_model = _Model(dims, self.seed, run_offsets=runs)
            self._models[dims] = (score_model, _Model(dims, self.seed, linear_mean=True))
        return self._models[dims]

    def _with_runs(self, x: np.ndarray, runs: np.ndarray) -> np.ndarray:
        """x with the run id as a last column, when the score model reads it."""
        if self.curve_weighting != "trial":
            return x
        return np.hstack([x, runs.reshape(-1, 1).astype(float)])

    def _fit(self, obs: Observations, pending: np.ndarray) -> tuple[_Model, _Model, np.ndarray]:
        """Fit the score and cost models on the modelled keys; returns them and those keys' mask.

        With curve_weighting "trial" the score model knows which run each point came from and
        can fit a per-run offset (the seed's luck shared by a curve), so ten points of one run
        are not taken for ten independent results.
        """
        assert obs.modelled is not None and obs.failed is not None
        cols = obs.modelled
        idx = self._subsample(obs)
        x, score, runs = obs.x[idx][:, cols], obs.score[idx], obs.trial[idx]
        if len(pending):
            # Constant liar: runs in flight elsewhere count as scoring the worst seen, so this
            # worker does not propose them again; their lie leaves once their results arrive.
            x = np.vstack([x, pending[:, cols]])
            score = np.concatenate([score, np.full(len(pending), obs.score.min())])
            runs = np.concatenate([runs, -1 - np.arange(len(pending))])
        score_model, cost_model = self._models_for(int(cols.sum()))
        score_model.fit(self._with_runs(x, runs), score)
        # A failed run's seconds say when it broke, not what its length costs.
        ran = idx[~obs.failed[idx]]
        cost_model.fit(obs.x[ran][:, cols], np.log(obs.cost[ran]))
        return score_model, cost_model, cols

    def _target_cost(self, log_costs: np.ndarray) -> tuple[float, float]:
        """A log-cost to aim for, and the span of log-costs seen."""
        lo, hi = float(log_costs.min()), float(log_costs.max())
        # Aim a little past both ends of what has been seen, so the front keeps extending;
        # further on the expensive side, since start-up runs are all cheap.
        span = max(hi - lo, math.log(2.0))
        lo_t, hi_t = lo - 0.1 * span, hi + 0.25 * span
        if self.max_cost is not None:
            hi_t = min(hi_t, math.log(self.max_cost))
            lo_t = min(lo_t, hi_t)
        return float(self._rng.uniform(lo_t, hi_t)), span

    def suggest_unit(self, obs: Observations, pending: np.ndarray | None = None) -> np.ndarray:
        """One suggestion in unit coordinates from the observations so far (and runs in flight)."""
        assert obs.failed is not None
        pending = pending if pending is not None else np.zeros((0, len(self.space)))
        score_model, cost_model, cols = self._fit(obs, pending)
        ok = np.flatnonzero(~obs.failed)
        front = ok[pareto_front(list(obs.cost[ok]), list(obs.score[ok]))]
        cands = self.candidates(obs, front)
        # Each candidate is a new run: an id no observation has.
        new_runs = -(10**9) - np.arange(len(cands))
        mu, sd = score_model.predict(self._with_runs(cands[:, cols], new_runs))
        pred_cost, _ = cost_model.predict(cands[:, cols])
        target, span = self._target_cost(np.log(obs.cost[ok]))
        distance = np.abs(pred_cost - target)
        near = distance <= 0.05 * span
        # Too few candidates predicted near the target: take the nearest few percent.
        min_near = max(4, len(cands) // 20)
        if near.sum() < min_near:
            near = distance <= np.sort(distance)[min_near - 1]
        if self.max_cost is not None:
            affordable = pred_cost <= math.log(self.max_cost)
            if (near & affordable).any():
                near &= affordable
        ucb = mu + self.ucb_beta * sd
        ucb[~near] = -np.inf
        best = int(np.argmax(ucb))
        self.last_info = {
            "kind": "pareto",
            "target_cost": math.exp(target),
            "predicted_cost": float(math.exp(pred_cost[best])),
            "predicted_score": float(mu[best]),
            "front_size": len(front),
            "observations": len(obs),
            "pending": len(pending),
            "failed": int(obs.failed.sum()),
        }
        return cands[best]


def make_sampler(
    name: str,
    space: SearchSpace,
    seed: int | None = None,
    center: dict[str, Any] | None = None,
    max_cost: float | None = None,
    n_startup: int = 8,
    sobol_seed: int | None = None,
) -> BaseSampler:
    """'pareto' (cost-aware, default) or Optuna's 'random', 'tpe', 'gp' in multi-objective mode."""
    if name == "pareto":
        return ParetoSampler(
            space, seed=seed, sobol_seed=sobol_seed, center=center, max_cost=max_cost, n_startup=n_startup
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup, multivariate=True, constant_liar=True
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def finished_states() -> tuple[TrialState, ...]:
    """Trial states that count towards a sweep's --trials (early-stopped runs are finished runs)."""
    return (TrialState.COMPLETE, TrialState.PRUNED)
