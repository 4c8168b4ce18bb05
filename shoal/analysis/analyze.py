"""`shoal analyze`: everything computed about one sweep, two-sweep comparison, and the written outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shoal.analysis import stats
from shoal.analysis.report import Report
from shoal.analysis.sweeps import Sweep
from shoal.core.fileio import write_text_atomic


@dataclass
class SweepAnalysis:
    sweep: Sweep
    considered: pd.DataFrame  # trials under --max-cost (all completed trials without it)
    front_cost: pd.DataFrame
    front_steps: pd.DataFrame
    top: pd.DataFrame
    defaults: dict[str, Any]
    top_table: pd.DataFrame
    param_summary: pd.DataFrame
    importance: stats.Importance
    fastest: pd.DataFrame | None
    repro_summary: pd.DataFrame
    repro_tests: stats.ReproductionTests
    max_cost: float | None = None
    min_score: float | None = None
    top_n: int = 10


def analyze_sweep(
    sweep: Sweep,
    max_cost: float | None = None,
    min_score: float | None = None,
    top: int = 10,
    importance_methods: tuple[str, ...] = ("fanova", "ped-anova"),
) -> SweepAnalysis:
    """Fronts, top-N with defaults and ranges, importance and seed-reproduction statistics."""
    trials = sweep.trials
    considered = stats.filter_max_cost(trials, max_cost)
    best = stats.top_n(trials, top, max_cost)
    defaults = stats.param_defaults(sweep.param_names, sweep.base_config)
    return SweepAnalysis(
        sweep=sweep,
        considered=considered,
        front_cost=stats.pareto_front(considered, x="cost"),
        front_steps=stats.pareto_front(considered, x="steps"),
        top=best,
        defaults=defaults,
        top_table=stats.top_table(best, sweep.param_names, defaults),
        param_summary=stats.parameter_summary(trials, best, sweep.param_names, defaults),
        # Importance explains the whole sweep's search space, so it always uses every trial.
        importance=stats.param_importance(trials, sweep.distributions, importance_methods),
        fastest=stats.fastest_to_score(considered, min_score) if min_score is not None else None,
        repro_summary=stats.reproduction_summary(sweep.reproductions, trials),
        repro_tests=stats.reproduction_tests(sweep.reproductions, trials),
        max_cost=max_cost,
        min_score=min_score,
        top_n=top,
    )


@dataclass
class SweepComparison:
    """The test between two sweeps, with a label saying exactly which samples were compared.

    `comparison` is None when no valid test applies (see compare_sweeps); `notes` say why.
    """

    kind: str  # "seed re-runs" or "no test"
    label: str
    comparison: stats.Comparison | None
    notes: list[str] = field(default_factory=list)


def _best_reproduced(analysis: SweepAnalysis) -> tuple[int, pd.Series] | None:
    """The config of a sweep that its re-run tests start from (chosen by its sweep score)."""
    summary = analysis.repro_summary
    summary = summary[summary["n"] >= 2] if not summary.empty else summary
    if summary.empty:
        return None
    chosen = analysis.repro_tests.best
    source = chosen if chosen is not None and chosen in set(summary["source_trial"]) else None
    if source is None:
        source = int(summary["source_trial"].iloc[0])
    repro = analysis.sweep.reproductions
    return source, repro.loc[repro["source_trial"] == source, "score"]


def compare_sweeps(a: SweepAnalysis, b: SweepAnalysis, k: int | None = None) -> SweepComparison:
    """Seed re-runs of each sweep's best reproduced config when both have them; else no test.

    Without re-runs there is no valid test: the top-k trials of a sweep are different configs,
    picked for being the best of many noisy runs (so their scores are biased upwards by the
    selection), and they depend on each other through the sampler, so they are not two samples
    of anything that a two-sample test could compare. The best scores are shown, untested.
    """
    name_a, name_b = a.sweep.name, b.sweep.name
    best_a, best_b = _best_reproduced(a), _best_reproduced(b)
    if best_a is not None and best_b is not None:
        (source_a, scores_a), (source_b, scores_b) = best_a, best_b
        comparison = stats.compare_samples(
            scores_a,
            scores_b,
            f"{name_a} {stats.config_label(source_a)}",
            f"{name_b} {stats.config_label(source_b)}",
        )
        label = (
            f"seed re-runs of each sweep's best reproduced config ({name_a} {stats.config_label(source_a)} "
            f"vs {name_b} {stats.config_label(source_b)})"
        )
        return SweepComparison("seed re-runs", label, comparison)
    missing = [n for n, best in ((name_a, best_a), (name_b, best_b)) if best is None]
    k = k or min(a.top_n, b.top_n)
    shown = [f"{n} best {k}: {_scores_text(x.top['score'].head(k))}" for n, x in ((name_a, a), (name_b, b))]
    notes = [
        f"no seed re-runs (2 or more) for {', '.join(missing)}: run `shoal reproduce NAME --top 3 --seeds 5` "
        "on both sweeps to test them",
        "the best trials of two sweeps are not compared by a test: they are different configs chosen for "
        "being the best of many noisy runs, and each sweep's trials depend on each other through its "
        "sampler, so no test applies to them; their scores, untested: " + "; ".join(shown),
    ]
    return SweepComparison("no test", "no valid test without seed re-runs of both sweeps", None, notes)


def _scores_text(scores: pd.Series) -> str:
    return ", ".join(stats.format_value(float(v)) for v in scores)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _trials_csv(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["curve"], errors="ignore")


def _front_display(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    columns = ["trial", "score", "cost", "steps", "sps"] + [n for n in names if n in frame]
    shown = frame[columns].copy()
    return shown.rename(columns={"cost": "cost (s)", "steps": "agent steps", "sps": "steps/s"})


def write_outputs(
    analyses: list[SweepAnalysis], out_dir: str | Path, between: SweepComparison | None = None
) -> list[Path]:
    """PNGs, trials CSVs and report.html for one sweep (or two, with --vs) into ``out_dir``."""
    from shoal.analysis import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = [(a.sweep.name, a.sweep.trials) for a in analyses]
    written = [
        plots.plot_fronts(frames, out / "front_cost.png", x="cost", max_cost=analyses[0].max_cost),
        plots.plot_fronts(frames, out / "front_steps.png", x="steps"),
        plots.plot_sps(frames, out / "sps.png"),
    ]
    per_sweep: dict[str, dict[str, Path]] = {}
    for index, analysis in enumerate(analyses):
        suffix = "" if index == 0 else "_" + _safe(analysis.sweep.name)
        files = _write_sweep_files(analysis, out, suffix)
        per_sweep[analysis.sweep.name] = files
        written.extend(files.values())

    report = Report("Sweep report: " + " vs ".join(a.sweep.name for a in analyses))
    _report_overview(report, analyses, out, between)
    for analysis in analyses:
        _report_sweep(report, analysis, per_sweep[analysis.sweep.name])
    written.append(report.write(out / "report.html"))
    return written


def _write_sweep_files(analysis: SweepAnalysis, out: Path, suffix: str) -> dict[str, Path]:
    """One sweep's figures and trials CSV, named with `suffix` so two sweeps can share `out`."""
    from shoal.analysis import plots

    sweep = analysis.sweep
    files = {
        "params": plots.plot_param_scatter(
            sweep.trials,
            sweep.param_names,
            sweep.distributions,
            analysis.defaults,
            out / f"params{suffix}.png",
        ),
        "importance": plots.plot_importance(
            analysis.importance.table, out / f"importance{suffix}.png", analysis.importance.message
        ),
        "curves": plots.plot_top_curves(analysis.top, out / f"curves{suffix}.png", sweep.name),
    }
    if not sweep.reproductions.empty:
        files["reproduce"] = plots.plot_reproductions(
            sweep.reproductions,
            out / f"reproduce{suffix}.png",
            sweep.trials,
            f"Seed reproduction: {sweep.name}",
        )
    csv_path = out / f"trials{suffix}.csv"
    write_text_atomic(csv_path, _trials_csv(sweep.trials).to_csv(index=False))
    files["csv"] = csv_path
    return files


def _report_overview(
    report: Report, analyses: list[SweepAnalysis], out: Path, between: SweepComparison | None
) -> None:
    """Where the sweeps are, their fronts, the test between them and their throughput."""
    for analysis in analyses:
        sweep = analysis.sweep
        report.paragraph(
            f"{sweep.name}: {sweep.where}; env {sweep.env or 'unknown'}; trials: {sweep.counts_text()}; "
            f"total cost {sweep.trials['cost'].sum():,.0f} s."
        )
    max_cost = analyses[0].max_cost
    if max_cost is not None:
        report.paragraph(f"Fronts and top runs only consider trials with cost <= {max_cost:g} s.", "note")
    report.heading("Score vs cost")
    report.image(out / "front_cost.png", "score vs cost")
    report.heading("Score vs agent steps")
    report.image(out / "front_steps.png", "score vs agent steps")
    for analysis in analyses:
        report.heading(f"Pareto front (score vs cost): {analysis.sweep.name}")
        report.table(_front_display(analysis.front_cost, analysis.sweep.param_names))
    if between is not None:
        report.heading("Is the difference between the sweeps real?")
        report.paragraph(f"Compared: {between.label}.")
        for note in between.notes:
            report.paragraph(note, "note")
        if between.comparison is not None:
            report.verdict(between.comparison.text(), between.comparison.significant)
    report.heading("Throughput")
    report.paragraph(
        "Steps per second of each trial. A sweep on a faster machine reaches more steps in the same cost; "
        "compare score vs agent steps before crediting the algorithm.",
        "note",
    )
    report.image(out / "sps.png", "steps per second")


def _report_sweep(report: Report, analysis: SweepAnalysis, files: dict[str, Path]) -> None:
    """One sweep's sections: top trials, fastest to the score, parameters, importance, re-runs."""
    sweep = analysis.sweep
    report.heading(f"Top {len(analysis.top)} trials: {sweep.name}")
    report.table(analysis.top_table)
    report.table(analysis.param_summary)
    report.image(files["curves"], "learning curves")
    if analysis.fastest is not None:
        _report_fastest(report, analysis)
    report.heading(f"Parameters: {sweep.name}")
    report.image(files["params"], "score vs parameters")
    report.heading(f"Parameter importance: {sweep.name}")
    if analysis.importance.ok:
        report.table(analysis.importance.table, index=True)
    if analysis.importance.message:
        report.paragraph(analysis.importance.message, "note")
    report.image(files["importance"], "importance")
    report.heading(f"Seed reproduction: {sweep.name}")
    if sweep.reproductions.empty:
        report.paragraph(
            f"No seed re-runs yet; run `shoal reproduce {sweep.name} --top 3 --seeds 5`.", "note"
        )
    else:
        report.table(analysis.repro_summary)
        if analysis.repro_tests.selection:
            report.paragraph(f"How the best was chosen: {analysis.repro_tests.selection}.", "note")
        for test in analysis.repro_tests.tests:
            report.verdict(test.text(), test.significant)
        report.image(files["reproduce"], "seed reproduction")


def _report_fastest(report: Report, analysis: SweepAnalysis) -> None:
    assert analysis.fastest is not None
    report.heading(f"Fastest to score >= {analysis.min_score:g}: {analysis.sweep.name}")
    if analysis.fastest.empty:
        report.paragraph(f"No trial reached score {analysis.min_score:g}.", "note")
        return
    columns = ["trial", "cost_to_reach", "steps_to_reach", "score", "cost"]
    shown = analysis.fastest[columns].head(analysis.top_n)
    names = {
        "cost_to_reach": "cost to reach (s)",
        "steps_to_reach": "steps to reach",
        "cost": "total cost (s)",
    }
    report.table(shown.rename(columns=names))
