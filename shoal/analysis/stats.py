"""What mattered and is it real: fronts, filters, top-N tables, importance, significance."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from scipy import stats as scipy_stats

from shoal.core.checks import check_positive_int
from shoal.sweep.pareto import pareto_front as front_indices

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
# Fewer completed trials than this and importance estimates are noise, so none are reported.
MIN_TRIALS_FOR_IMPORTANCE = 5


# ---------------------------------------------------------------- fronts and filters


def pareto_front(frame: pd.DataFrame, x: str = "cost", y: str = "score") -> pd.DataFrame:
    """Trials not dominated on (maximize ``y``, minimize ``x``), sorted by ``x``.

    A trial is on the front when no trial that is at most as expensive scores at least as well
    (with one of the two strictly better). Rows with a non-finite x or y are ignored.
    """
    if frame.empty:
        return frame.copy()
    return frame.iloc[front_indices(frame[x].astype(float).tolist(), frame[y].astype(float).tolist())]


def filter_max_cost(frame: pd.DataFrame, max_cost: float | None) -> pd.DataFrame:
    """Trials whose cost (seconds) is at most ``max_cost``; all of them when it is None."""
    if max_cost is None:
        return frame
    if max_cost <= 0:
        raise ValueError(f"max cost must be a positive number of seconds, got {max_cost}")
    return frame[frame["cost"] <= max_cost]


def time_to_reach(curve: list[tuple[float, float, float]], min_score: float) -> tuple[float, float]:
    """(cost seconds, agent steps) of the first curve point with score >= min_score; NaNs if never."""
    for cost, steps, score in curve:
        if not math.isnan(score) and score >= min_score:
            return cost, steps
    return math.nan, math.nan


def fastest_to_score(frame: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """Trials that reached ``min_score``, cheapest first, with ``cost_to_reach``/``steps_to_reach``.

    The time to reach the score comes from the trial's curve when it has one, else (for trials
    whose final score reached it) the whole run's cost.
    """
    rows = []
    for index, row in frame.iterrows():
        cost, steps = time_to_reach(row["curve"] or [], min_score)
        if math.isnan(cost) and row["score"] >= min_score:
            cost, steps = row["cost"], row["steps"]
        if not math.isnan(cost):
            rows.append((index, cost, steps))
    result = frame.loc[[r[0] for r in rows]].copy()
    result["cost_to_reach"] = [r[1] for r in rows]
    result["steps_to_reach"] = [r[2] for r in rows]
    return result.sort_values(["cost_to_reach", "score"], ascending=[True, False], kind="mergesort")


def top_n(frame: pd.DataFrame, n: int, max_cost: float | None = None) -> pd.DataFrame:
    """The ``n`` best-scoring trials (under ``max_cost`` when given), best first."""
    check_positive_int("top N", n)
    candidates = filter_max_cost(frame, max_cost)
    candidates = candidates[np.isfinite(candidates["score"])]
    return candidates.sort_values(["score", "cost"], ascending=[False, True], kind="mergesort").head(n)


# ---------------------------------------------------------------- defaults and parameter ranges


def lookup_dotted(config: dict[str, Any], dotted: str) -> Any:
    """config['train']['learning_rate'] for 'train.learning_rate' (also accepts flat dotted keys)."""
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and part.replace("-", "_") in node:
            node = node[part.replace("-", "_")]
        else:
            raise KeyError(dotted)
    return node


def param_defaults(names: list[str], base_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Default value of each parameter: the sweep's base_config, else shoal.core.config's defaults."""
    from shoal.core.config import Config

    fallback = Config().to_dict()
    defaults: dict[str, Any] = {}
    for name in names:
        value: Any = None
        for source in (base_config or {}, fallback):
            try:
                value = lookup_dotted(source, name)
                break
            except KeyError:
                continue
        defaults[name] = value
    return defaults


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def format_value(value: Any) -> str:
    """Compact text for a parameter or metric value."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return "-" if math.isnan(number) else str(number)
        if number == 0:
            return "0"
        if abs(number) >= 10_000:
            return f"{number:,.0f}"
        if number.is_integer():
            return str(int(number))
        if abs(number) < 1e-3:
            return f"{number:.3g}"
        return f"{number:.4g}"
    return str(value)


def parameter_summary(
    sweep_frame: pd.DataFrame,
    top: pd.DataFrame,
    names: list[str],
    defaults: dict[str, Any],
) -> pd.DataFrame:
    """Per parameter: default, range among the top runs, range over the sweep, and a verdict.

    The verdict says where the top runs sit relative to the default, e.g.
    "above default in 9/10 top runs", or for categorical parameters "adam in 7/10 top runs".
    """
    rows = []
    for name in names:
        default = defaults.get(name)
        top_values = top[name].dropna() if name in top else pd.Series(dtype=float)
        all_values = sweep_frame[name].dropna() if name in sweep_frame else pd.Series(dtype=float)
        n = len(top_values)
        row: dict[str, Any] = {"parameter": name, "default": format_value(default)}
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        if n and _is_numeric(top_values) and _is_numeric(all_values):
            row["top range"] = f"{format_value(top_values.min())} .. {format_value(top_values.max())}"
            row["sweep range"] = f"{format_value(all_values.min())} .. {format_value(all_values.max())}"
            if numeric_default:
                above = int((top_values > default).sum())
                below = int((top_values < default).sum())
                if above > n / 2:
                    row["verdict"] = f"above default in {above}/{n} top runs"
                elif below > n / 2:
                    row["verdict"] = f"below default in {below}/{n} top runs"
                elif above + below == 0:
                    row["verdict"] = f"equal to default in {n}/{n} top runs"
                elif below == 0:
                    row["verdict"] = f"at or above default in {n}/{n} top runs ({above} above)"
                elif above == 0:
                    row["verdict"] = f"at or below default in {n}/{n} top runs ({below} below)"
                else:
                    row["verdict"] = f"mixed: {above} above, {below} below, {n - above - below} equal"
            else:
                row["verdict"] = f"median {format_value(float(top_values.median()))} in top runs"
        elif n:
            counts = top_values.astype(str).value_counts()
            row["top range"] = ", ".join(sorted(counts.index))
            row["sweep range"] = ", ".join(sorted(all_values.astype(str).unique()))
            common, hits = counts.index[0], int(counts.iloc[0])
            note = (
                "the default" if common == format_value(default) or common == str(default) else "not default"
            )
            row["verdict"] = f"{common} in {hits}/{n} top runs ({note})"
        else:
            row["top range"] = row["sweep range"] = "-"
            row["verdict"] = "not sampled in the top runs"
        rows.append(row)
    return pd.DataFrame(rows, columns=["parameter", "default", "top range", "sweep range", "verdict"])


def top_table(top: pd.DataFrame, names: list[str], defaults: dict[str, Any]) -> pd.DataFrame:
    """Parameters as rows, with the default next to each top run's value (columns '#<trial>')."""
    data: dict[str, list[str]] = {"parameter": [], "default": []}
    columns = [f"#{int(t)}" for t in top["trial"]]
    for column in columns:
        data[column] = []
    for label, key in (
        ("score", "score"),
        ("cost (s)", "cost"),
        ("agent steps", "steps"),
        ("steps/s", "sps"),
    ):
        data["parameter"].append(label)
        data["default"].append("")
        for column, value in zip(columns, top[key], strict=True):
            data[column].append(format_value(value))
    for name in names:
        data["parameter"].append(name)
        data["default"].append(format_value(defaults.get(name)))
        for column, value in zip(columns, top[name] if name in top else [None] * len(top), strict=True):
            data[column].append(format_value(None if _missing(value) else value))
    return pd.DataFrame(data)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- importance


@dataclass
class Importance:
    """Parameter importances for the score (columns: one per method), or why there are none."""

    table: pd.DataFrame
    message: str = ""
    methods: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.table.empty


def _usable_distribution(dist: BaseDistribution, values: pd.Series) -> BaseDistribution | None:
    """The distribution widened to cover the observed values (sweep spaces may change mid-sweep)."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        for value in values.unique():
            if value not in choices:
                choices.append(value)
        return CategoricalDistribution(choices)
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        low = min(dist.low, values.min())
        high = max(dist.high, values.max())
        if isinstance(dist, IntDistribution):
            step = dist.step if ((values - low) % dist.step == 0).all() else 1
            return IntDistribution(int(low), int(high), log=dist.log and low > 0, step=step)
        step = dist.step
        if step is not None and not np.allclose(((values - low) / step) % 1, 0):
            step = None
        return FloatDistribution(float(low), float(high), log=dist.log and low > 0, step=step)
    return None


def param_importance(
    frame: pd.DataFrame,
    distributions: dict[str, BaseDistribution],
    methods: tuple[str, ...] = ("fanova", "ped-anova"),
    seed: int = 0,
) -> Importance:
    """Importance of each parameter for the score, with Optuna's fANOVA and/or PED-ANOVA.

    Only completed trials with a finite score are used; they are copied into an in-memory
    single-objective study so running/failed trials and the cost objective cannot interfere.
    With too few trials (or no varied parameter) the result is empty and ``message`` says why.
    """
    valid = frame[np.isfinite(frame["score"])] if not frame.empty else frame
    names = [n for n in distributions if n in valid and valid[n].notna().all() and valid[n].nunique() > 1]
    # The evaluators need every parameter in every trial; conditional ones are left out and named.
    partial = [n for n in distributions if n in valid and valid[n].isna().any() and valid[n].notna().any()]
    if len(valid) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importance(
            pd.DataFrame(),
            f"parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials "
            f"with a score; this sweep has {len(valid)}.",
        )
    if not names:
        return Importance(pd.DataFrame(), "no parameter took more than one value, so none can matter.")
    dists = {}
    for name in names:
        usable = _usable_distribution(distributions[name], valid[name])
        if usable is not None:
            dists[name] = usable
    columns, problems = _importances(_scratch_study(valid, dists), methods, seed)
    if not columns:
        return Importance(pd.DataFrame(), "; ".join(problems))
    table = pd.DataFrame(columns).reindex(list(dists)).fillna(0.0)
    table = table.sort_values(list(columns)[0], ascending=False)
    table.index.name = "parameter"
    if partial:
        problems.append(f"left out because not every trial set them: {', '.join(sorted(partial))}")
    return Importance(table, "; ".join(problems), list(columns))


def _scratch_study(valid: pd.DataFrame, dists: dict[str, BaseDistribution]) -> optuna.Study:
    """An in-memory single-objective study holding each row of `valid` as a completed trial."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the scratch study is not news to the user
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    trials = []
    for _, row in valid.iterrows():
        params = {name: _python_value(row[name], dists[name]) for name in dists}
        trials.append(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(row["score"]))
        )
    study.add_trials(trials)
    return study


def _importances(
    study: optuna.Study, methods: tuple[str, ...], seed: int
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """({method: {parameter: normalized importance}}, a message per method that failed)."""
    evaluators = {
        "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=seed),
        # PED-ANOVA treats lower targets as better, so it is given the negated score below.
        "ped-anova": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
    }
    columns: dict[str, dict[str, float]] = {}
    problems = []
    for method in methods:
        if method not in evaluators:
            raise ValueError(f"unknown importance method {method!r}; expected one of {sorted(evaluators)}")
        target = (lambda t: -t.value) if method == "ped-anova" else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                columns[method] = optuna.importance.get_param_importances(
                    study, evaluator=evaluators[method](), target=target, normalize=True
                )
        except Exception as e:  # one evaluator failing (e.g. degenerate data) leaves the other
            problems.append(f"{method} failed: {e}")
    return columns, problems


def _python_value(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- significance


def _clean(values: Any) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def _resampled_means(rng: np.random.Generator, data: np.ndarray, resamples: int) -> np.ndarray:
    """Means of `resamples` bootstrap samples (drawn with replacement) of `data`."""
    return rng.choice(data, size=(resamples, len(data)), replace=True).mean(axis=1)


def bootstrap_ci(
    values: Any, confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. One sample gives (x, x); none gives NaNs."""
    data = _clean(values)
    if len(data) == 0:
        return math.nan, math.nan
    if len(data) == 1:
        return float(data[0]), float(data[0])
    means = _resampled_means(np.random.default_rng(seed), data, resamples)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass
class SampleStats:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def describe(values: Any, seed: int = 0) -> SampleStats:
    """n, mean, sample std (ddof=1) and bootstrap 95% CI of the mean of finite values."""
    data = _clean(values)
    low, high = bootstrap_ci(data, seed=seed)
    return SampleStats(
        n=len(data),
        mean=float(data.mean()) if len(data) else math.nan,
        std=float(data.std(ddof=1)) if len(data) > 1 else math.nan,
        ci_low=low,
        ci_high=high,
    )


@dataclass
class Comparison:
    """Two-sample comparison of scores: is A different from B?"""

    label_a: str
    label_b: str
    a: SampleStats
    b: SampleStats
    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    significant: bool
    alpha: float
    note: str = ""
    # Set when this is one of several tests: the Holm-adjusted p-value and how many tests.
    p_adjusted: float = math.nan
    family: int = 1

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "not significant"

    def text(self) -> str:
        low, high = self.diff_ci
        line = (
            f"{self.label_a} (n={self.a.n}, mean {format_value(self.a.mean)}) vs {self.label_b} "
            f"(n={self.b.n}, mean {format_value(self.b.mean)}): difference {format_value(self.diff)} "
            f"[{(1 - self.alpha) * 100:g}% CI {format_value(low)} .. {format_value(high)}], "
            f"Mann-Whitney U p={self.p_value:.3g}"
            + (
                f", Holm-adjusted over {self.family} tests p={self.p_adjusted:.3g}"
                if self.family > 1 and math.isfinite(self.p_adjusted)
                else ""
            )
            + f" -> {self.verdict} at alpha {self.alpha}"
        )
        return line + (f" ({self.note})" if self.note else "")


def min_exact_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided p-value an exact Mann-Whitney U test can give for these sizes."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a)) if n_a and n_b else 1.0


def compare_samples(
    a: Any,
    b: Any,
    label_a: str = "A",
    label_b: str = "B",
    alpha: float = ALPHA,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Mann-Whitney U (two-sided) plus a bootstrap CI of the difference of means (A - B).

    "significant" requires both to agree: p < alpha and a CI that excludes zero. The rank test
    makes no normality assumption and is exact for small samples without ties; the bootstrap
    CI alone is too narrow for a handful of seeds, which is why it is not trusted alone.
    """
    x, y = _clean(a), _clean(b)
    stats_a, stats_b = describe(x, seed), describe(y, seed + 1)
    notes = []
    if len(x) < 2 or len(y) < 2:
        return Comparison(
            label_a,
            label_b,
            stats_a,
            stats_b,
            stats_a.mean - stats_b.mean if len(x) and len(y) else math.nan,
            (math.nan, math.nan),
            math.nan,
            False,
            alpha,
            "too few samples: need at least 2 finite scores on each side",
        )
    if np.ptp(np.concatenate([x, y])) == 0:
        p_value = 1.0
    else:
        p_value = float(scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method="auto").pvalue)
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(rng, x, resamples) - _resampled_means(rng, y, resamples)
    tail = alpha / 2 * 100
    diff_ci = (float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail)))
    excludes_zero = diff_ci[0] > 0 or diff_ci[1] < 0
    significant = p_value < alpha and excludes_zero
    floor = min_exact_p(len(x), len(y))
    if floor >= alpha:
        notes.append(f"with n={len(x)} and n={len(y)} the rank test cannot go below p={floor:.2g}; add seeds")
    elif p_value < alpha and not excludes_zero:
        notes.append("the rank test and the bootstrap CI disagree, so this is not called significant")
    return Comparison(
        label_a,
        label_b,
        stats_a,
        stats_b,
        float(x.mean() - y.mean()),
        diff_ci,
        p_value,
        bool(significant),
        alpha,
        "; ".join(notes),
    )


def reproduction_summary(reproductions: pd.DataFrame, originals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per re-run config (source_trial): n, mean, std, 95% CI, and the original sweep score."""
    rows = []
    if reproductions.empty:
        return pd.DataFrame(columns=["source_trial", "n", "mean", "std", "ci_low", "ci_high", "original"])
    originals_by_trial = (
        dict(zip(originals["trial"], originals["score"], strict=True)) if originals is not None else {}
    )
    for source, group in reproductions.groupby("source_trial", sort=False):
        summary = describe(group["score"])
        rows.append(
            {
                "source_trial": int(source),
                "n": summary.n,
                "mean": summary.mean,
                "std": summary.std,
                "ci_low": summary.ci_low,
                "ci_high": summary.ci_high,
                "original": originals_by_trial.get(int(source), math.nan),
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values("mean", ascending=False, kind="mergesort").reset_index(drop=True)


def config_label(source_trial: int) -> str:
    if source_trial >= 0:
        return f"trial #{source_trial}"
    return "config file" if source_trial == -1 else f"config file #{-source_trial}"


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order); NaN p-values stay NaN and do not count."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        # Monotone: a smaller raw p-value never gets a larger adjusted one than the next.
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class ReproductionTests:
    """The best re-run config against each other one, Holm-corrected, and how the best was chosen."""

    best: int | None = None
    selection: str = ""
    tests: list[Comparison] = field(default_factory=list)


def _pick_best(summary: pd.DataFrame) -> tuple[int, str]:
    """The config to test the others against, chosen where possible on data the tests do not use."""
    swept = summary[(summary["source_trial"] >= 0) & summary["original"].notna()]
    if not swept.empty:
        row = swept.loc[swept["original"].idxmax()]
        return int(row["source_trial"]), (
            f"{config_label(int(row['source_trial']))} is tested against the others because it has the best "
            f"score in the sweep ({format_value(row['original'])}); the tests use only the fresh seed "
            "re-runs, so the choice does not bias them"
        )
    best = int(summary["source_trial"].iloc[0])
    return best, (
        f"{config_label(best)} has the best mean re-run score and is tested on those same re-runs: "
        "choosing the best on the data that tests it biases the tests towards it (no sweep score "
        "was available to choose by)"
    )


def reproduction_tests(
    reproductions: pd.DataFrame, originals: pd.DataFrame | None = None, alpha: float = ALPHA
) -> ReproductionTests:
    """The config with the best sweep score (`originals`: the sweep's trials frame) against each
    other re-run config, on the re-runs only, with Holm's correction for the k - 1 tests.

    Without sweep scores (config files only, or no `originals`) the best re-run mean is taken,
    and the selection text says that this biases the tests.
    """
    summary = reproduction_summary(reproductions, originals)
    if len(summary) < 2:
        return ReproductionTests()
    best, selection = _pick_best(summary)
    best_scores = reproductions.loc[reproductions["source_trial"] == best, "score"]
    tests = []
    for other in summary["source_trial"]:
        if int(other) == best:
            continue
        other_scores = reproductions.loc[reproductions["source_trial"] == other, "score"]
        tests.append(
            compare_samples(best_scores, other_scores, config_label(best), config_label(int(other)), alpha)
        )
    for test, p_adjusted in zip(tests, holm([t.p_value for t in tests]), strict=True):
        test.p_adjusted = p_adjusted
        test.family = len(tests)
        excludes_zero = test.diff_ci[0] > 0 or test.diff_ci[1] < 0
        test.significant = bool(math.isfinite(p_adjusted) and p_adjusted < alpha and excludes_zero)
    return ReproductionTests(best, selection, tests)
