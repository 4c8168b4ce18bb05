"""Figures for sweeps and runs. Every function draws one figure and writes it atomically as PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from shoal.analysis.stats import config_label, pareto_front, reproduction_summary
from shoal.core.fileio import write_atomic

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.frameon": False,
    "legend.fontsize": 9,
}
SWEEP_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
AXIS_LABELS = {
    "cost": "cost (wall-clock seconds, log scale)",
    "steps": "agent steps (log scale)",
    "wall_time": "wall time (s)",
    "agent_steps": "agent steps",
}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG via a temp file and os.replace, so readers never see half a file."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def _figure(width: float = 7.5, height: float = 4.8, **kwargs: Any) -> tuple[Figure, Any]:
    # A bare Figure, not pyplot: no GUI backend to pick and no global figure list to close.
    # Constrained layout fits labels while drawing once; bbox_inches="tight" would draw twice.
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**kwargs)


def _finite(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column in columns:
        mask &= np.isfinite(frame[column].astype(float).to_numpy())
        if column in ("cost", "steps", "sps"):
            mask &= frame[column].astype(float).to_numpy() > 0
    return frame[mask]


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_fronts(
    sweeps: list[tuple[str, pd.DataFrame]],
    path: str | Path,
    x: str = "cost",
    max_cost: float | None = None,
) -> Path:
    """Score against cost (or agent steps) for one or two sweeps: faint trials, front as a step line."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        drawn = False
        for i, (name, frame) in enumerate(sweeps):
            color = SWEEP_COLORS[i % len(SWEEP_COLORS)]
            points = _finite(frame, x, "score")
            if points.empty:
                continue
            drawn = True
            ax.scatter(
                points[x],
                points["score"],
                s=18,
                color=color,
                alpha=0.25,
                linewidths=0,
                label=f"{name}: all trials ({len(points)})",
            )
            front = pareto_front(points, x=x, y="score")
            xs = list(front[x])
            ys = list(front["score"])
            # Extend the last step to the right edge so the front reads as "best score for this budget".
            xs.append(points[x].max())
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", color=color, linewidth=2, label=f"{name}: front ({len(front)})")
            ax.scatter(
                front[x], front["score"], s=36, color=color, edgecolors="white", linewidths=0.8, zorder=3
            )
        if x == "cost" and max_cost is not None:
            ax.axvline(max_cost, color="0.3", linestyle="--", linewidth=1, label=f"max cost {max_cost:g} s")
        if drawn:
            ax.set_xscale("log")
            ax.legend(loc="lower right")
        else:
            _no_data(ax, "no completed trials with a finite score")
        what = "cost" if x == "cost" else "agent steps"
        ax.set_title(f"Score vs {what}: " + " vs ".join(name for name, _ in sweeps))
        ax.set_xlabel(AXIS_LABELS[x])
        ax.set_ylabel("score (sweep objective)")
        return save_figure(fig, path)


def plot_sps(sweeps: list[tuple[str, pd.DataFrame]], path: str | Path) -> Path:
    """Steps per second of every trial: throughput differences are machine/config speed, not learning."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        drawn = False
        for i, (name, frame) in enumerate(sweeps):
            color = SWEEP_COLORS[i % len(SWEEP_COLORS)]
            points = _finite(frame, "sps")
            if points.empty:
                continue
            drawn = True
            median = float(points["sps"].median())
            ax.scatter(
                points["trial"],
                points["sps"],
                s=22,
                color=color,
                alpha=0.7,
                label=f"{name} (median {median:,.0f} steps/s)",
            )
            ax.axhline(median, color=color, linestyle="--", linewidth=1)
        if drawn:
            ax.legend(loc="best")
        else:
            _no_data(ax, "no trial recorded steps/s")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.set_title("Throughput per trial (steps/s)")
        ax.set_xlabel("trial number")
        ax.set_ylabel("agent steps per second")
        return save_figure(fig, path)


def _numeric_values(values: pd.Series) -> bool:
    """Numbers (also categorical ones such as power-of-two sizes) get a numeric axis; bools do not."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in values)


def _log_axis(dist: BaseDistribution | None, values: pd.Series) -> bool:
    if not (values > 0).all():
        return False
    if getattr(dist, "log", False):
        return True
    # Categorical numbers like 16, 32, ..., 512 are sampled on a log scale even without a log flag.
    return isinstance(dist, CategoricalDistribution) and values.max() / values.min() >= 8


def _ordered_labels(values: pd.Series) -> list[str]:
    unique = list(dict.fromkeys(values))
    try:
        unique.sort()
    except TypeError:  # mixed types: fall back to text order
        unique.sort(key=str)
    return [str(v) for v in unique]


def plot_param_scatter(
    frame: pd.DataFrame,
    names: list[str],
    distributions: dict[str, BaseDistribution],
    defaults: dict[str, Any],
    path: str | Path,
) -> Path:
    """One panel per parameter: score against its value, coloured by cost, default as a dashed line."""
    names = names or []
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    points = _finite(frame, "score", "cost") if not frame.empty else frame
    with matplotlib.rc_context(STYLE):
        fig, axes = _figure(4.2 * cols + 1.2, 3.4 * rows, nrows=rows, ncols=cols, squeeze=False)
        norm = _cost_norm(points)
        mappable = None
        rng = np.random.default_rng(0)  # one jitter stream across the panels
        for index, ax in enumerate(axes.flat):
            if index >= len(names):
                ax.set_visible(False)
                continue
            name = names[index]
            subset = points[points[name].notna()] if name in points else points.iloc[0:0]
            if subset.empty:
                _no_data(ax, "no values")
            elif not _numeric_values(subset[name]):
                mappable = _scatter_labels(ax, subset, name, defaults.get(name), norm, rng)
            else:
                mappable = _scatter_numbers(
                    ax, subset, name, defaults.get(name), distributions.get(name), norm
                )
            ax.set_title(name, fontsize=10)
            ax.set_xlabel(name + (" (log scale)" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel("score")
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.9)
            bar.set_label("cost (s)")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            bar.ax.yaxis.set_major_formatter(plain)
            bar.ax.yaxis.set_minor_formatter(plain if isinstance(norm, LogNorm) else NullFormatter())
        fig.suptitle("Score vs each parameter (colour = cost, dashed = default)", fontweight="bold")
        return save_figure(fig, path)


def _cost_norm(points: pd.DataFrame) -> Normalize:
    """The colour scale of cost: logarithmic when the costs are positive and differ."""
    costs = points["cost"].astype(float) if not points.empty else pd.Series(dtype=float)
    if len(costs) and costs.min() > 0 and costs.max() > costs.min():
        return LogNorm(vmin=costs.min(), vmax=costs.max())
    return Normalize(
        vmin=float(costs.min()) if len(costs) else 0, vmax=float(costs.max()) + 1 if len(costs) else 1
    )


def _scatter_labels(
    ax: Any, subset: pd.DataFrame, name: str, default: Any, norm: Normalize, rng: np.random.Generator
) -> Any:
    """A panel of a parameter with text values: one jittered column per value."""
    labels = _ordered_labels(subset[name])
    position = {label: i for i, label in enumerate(labels)}
    xs = np.array([position[str(v)] for v in subset[name]], dtype=float)
    xs += rng.uniform(-0.15, 0.15, size=len(xs))
    mappable = ax.scatter(xs, subset["score"], c=subset["cost"], cmap="viridis", norm=norm, s=22)
    ax.set_xticks(range(len(labels)))
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticklabels(labels, rotation=20)
    if default is not None and str(default).lower() in [lbl.lower() for lbl in labels]:
        match = [lbl for lbl in labels if lbl.lower() == str(default).lower()][0]
        ax.axvline(position[match], color="0.3", linestyle="--", linewidth=1)
    return mappable


def _scatter_numbers(
    ax: Any, subset: pd.DataFrame, name: str, default: Any, dist: BaseDistribution | None, norm: Normalize
) -> Any:
    """A panel of a numeric parameter, on a log axis where it was sampled on one."""
    values = subset[name].astype(float)
    mappable = ax.scatter(values, subset["score"], c=subset["cost"], cmap="viridis", norm=norm, s=22)
    if _log_axis(dist, values):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if isinstance(dist, CategoricalDistribution):
        ax.set_xticks(sorted(values.unique()))  # the few values a sweep can pick
        ax.xaxis.set_minor_locator(NullLocator())
    elif ax.get_xscale() != "log" and (isinstance(dist, IntDistribution) or (values == values.round()).all()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        ax.axvline(default, color="0.3", linestyle="--", linewidth=1, label="default")
        ax.legend(loc="best")
    return mappable


def plot_importance(table: pd.DataFrame, path: str | Path, message: str = "") -> Path:
    """Horizontal bars of normalized importance for the score, one bar group per method."""
    with matplotlib.rc_context(STYLE):
        height = max(2.5, 0.45 * max(1, len(table)) + 1.2)
        fig, ax = _figure(7.0, height)
        if table.empty:
            _no_data(ax, message or "no importances")
            ax.set_yticks([])
        else:
            methods = list(table.columns)
            ordered = table.iloc[::-1]
            ys = np.arange(len(ordered))
            width = 0.8 / len(methods)
            for i, method in enumerate(methods):
                ax.barh(
                    ys + (i - (len(methods) - 1) / 2) * width,
                    ordered[method],
                    height=width,
                    color=SWEEP_COLORS[i % len(SWEEP_COLORS)],
                    label=method,
                )
            ax.set_yticks(ys)
            ax.set_yticklabels(ordered.index)
            ax.set_xlim(0, max(1.0, float(np.nanmax(table.to_numpy())) * 1.05))
            ax.legend(loc="lower right")
        ax.set_title("Parameter importance for the score")
        ax.set_xlabel("normalized importance (sums to 1 per method)")
        return save_figure(fig, path)


def plot_reproductions(
    reproductions: pd.DataFrame, path: str | Path, originals: pd.DataFrame | None = None, title: str = ""
) -> Path:
    """Seed re-run scores per config: box, individual seeds, mean with bootstrap 95% CI, original score."""
    with matplotlib.rc_context(STYLE):
        summary = reproduction_summary(reproductions, originals)
        fig, ax = _figure(max(5.0, 1.3 * len(summary) + 2.5), 4.8)
        if summary.empty:
            _no_data(ax, "no seed re-runs")
        else:
            _draw_reproductions(ax, reproductions, summary)
        ax.set_title(title or "Seed reproduction of the top configs")
        ax.set_xlabel("config")
        ax.set_ylabel("score")
        return save_figure(fig, path)


def _draw_reproductions(ax: Any, reproductions: pd.DataFrame, summary: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    groups = [
        reproductions.loc[reproductions["source_trial"] == s, "score"].dropna()
        for s in summary["source_trial"]
    ]
    positions = np.arange(len(summary))
    ax.boxplot(
        groups,
        positions=positions,
        widths=0.5,
        showfliers=False,
        medianprops={"color": "0.3"},
        boxprops={"color": "0.6"},
        whiskerprops={"color": "0.6"},
        capprops={"color": "0.6"},
    )
    for pos, values in zip(positions, groups, strict=True):
        ax.scatter(
            pos + rng.uniform(-0.12, 0.12, len(values)),
            values,
            s=20,
            color=SWEEP_COLORS[0],
            alpha=0.6,
            zorder=3,
            label="seed re-run" if pos == 0 else None,
        )
    means = summary["mean"].to_numpy()
    errors = np.array([means - summary["ci_low"].to_numpy(), summary["ci_high"].to_numpy() - means])
    ax.errorbar(
        positions + 0.32,
        means,
        yerr=np.nan_to_num(errors),
        fmt="o",
        color="black",
        capsize=4,
        label="mean, bootstrap 95% CI",
        zorder=4,
    )
    if summary["original"].notna().any():
        ax.scatter(
            positions,
            summary["original"],
            marker="x",
            s=60,
            color=SWEEP_COLORS[1],
            zorder=5,
            label="score in the sweep",
        )
    ax.set_xticks(positions)
    ax.set_xticklabels([config_label(int(s)) for s in summary["source_trial"]])
    ax.legend(loc="best")


def plot_top_curves(top: pd.DataFrame, path: str | Path, name: str = "") -> Path:
    """Learning curves (score against cost) of the top trials, from their `curve` user attr."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        cmap = matplotlib.colormaps["viridis"]
        drawn = 0
        for i, (_, row) in enumerate(top.iterrows()):
            curve = [p for p in (row["curve"] or []) if p[0] > 0 and not math.isnan(p[2])]
            if not curve:
                continue
            xs, _, ys = zip(*curve, strict=True)
            ax.plot(
                xs,
                ys,
                color=cmap(i / max(1, len(top) - 1)),
                linewidth=1.5,
                label=f"#{int(row['trial'])} (score {row['score']:.3g})",
            )
            drawn += 1
        if drawn:
            ax.set_xscale("log")
            ax.legend(loc="best", ncols=2)
        else:
            _no_data(ax, "no learning curves recorded")
        ax.set_title(f"Learning curves of the top trials{': ' + name if name else ''}")
        ax.set_xlabel(AXIS_LABELS["cost"])
        ax.set_ylabel("score")
        return save_figure(fig, path)


def plot_run_curves(
    runs: list[Any],
    path: str | Path,
    x: str = "wall_time",
    metric: str = "score",
    min_score: float | None = None,
) -> Path:
    """One line per run of `metric` against wall time or agent steps."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        drawn = 0
        for i, run in enumerate(runs):
            frame = run.metrics
            if x not in frame or metric not in frame:
                continue
            data = frame[[x, metric]].apply(pd.to_numeric, errors="coerce").dropna()
            if data.empty:
                continue
            ax.plot(
                data[x],
                data[metric],
                color=matplotlib.colormaps["tab10"](i % 10),
                linewidth=1.6,
                marker="o" if len(data) < 15 else None,
                markersize=3,
                label=run.name,
            )
            drawn += 1
        if min_score is not None:
            ax.axhline(min_score, color="0.3", linestyle="--", linewidth=1, label=f"{metric} {min_score:g}")
        if drawn:
            ax.legend(loc="best")
        else:
            _no_data(ax, f"no run has both '{x}' and '{metric}'")
        ax.set_title(f"Learning curves: {metric} vs {'wall time' if x == 'wall_time' else 'agent steps'}")
        ax.set_xlabel(AXIS_LABELS.get(x, x))
        ax.set_ylabel(metric)
        return save_figure(fig, path)
