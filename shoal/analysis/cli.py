"""Entry points of `shoal analyze`, `shoal reproduce` and `shoal compare` (argv list -> exit code)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoal.analysis import stats
from shoal.analysis.sweeps import SweepNotFoundError, load_sweep
from shoal.core.checks import positive_arg
from shoal.sweep.storage import SWEEP_DIR, StorageError

if TYPE_CHECKING:
    from shoal.analysis.analyze import SweepAnalysis
    from shoal.analysis.reproduce import Job
    from shoal.analysis.runs import Run
    from shoal.analysis.sweeps import Sweep

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
REPRO_COLUMNS = {
    "source_trial": "config",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "original": "sweep score",
}


def _console() -> Console:
    # Piped output (CI logs, tests) would otherwise be squeezed into 80 columns.
    # Markup is off by default so names and messages with [brackets] print as they are; calls
    # that style text turn it on and escape what they interpolate.
    return Console(width=None if sys.stdout.isatty() else 150, highlight=False, markup=False)


def _run_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # --help and usage errors: hand back the code instead of exiting
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE


def _add_sweep_location(parser: argparse.ArgumentParser) -> None:
    """--storage and --sweep-dir: where a sweep NAME is found (as `shoal sweep` wrote it)."""
    parser.add_argument(
        "--storage", metavar="URL", help="Optuna RDB URL or journal file (default sweeps/NAME.journal)"
    )
    parser.add_argument(
        "--sweep-dir",
        "--sweeps-dir",
        dest="sweeps_dir",
        default=SWEEP_DIR,
        metavar="DIR",
        help="folder of sweep journal files (default sweeps)",
    )


def _table(frame: pd.DataFrame, title: str, index: bool = False) -> Table:
    table = Table(title=title, title_style="bold", header_style="bold cyan", show_lines=False)
    if index:
        table.add_column(str(frame.index.name or ""), justify="left")
    for i, column in enumerate(frame.columns):
        table.add_column(str(column), justify="left" if i == 0 and not index else "right", overflow="fold")
    for label, row in frame.iterrows():
        cells = [stats.format_value(v) if not isinstance(v, str) else v for v in row]
        table.add_row(*(([str(label)] if index else []) + cells))
    return table


def _metrics_frame(frame: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    columns = ["trial", "score", "cost", "steps", "sps"] + (extra or [])
    shown = frame[columns].copy()
    shown["trial"] = [f"#{int(t)}" for t in shown["trial"]]
    return shown.rename(columns={"cost": "cost (s)", "steps": "agent steps", "sps": "steps/s"})


def _repro_table(summary: pd.DataFrame, title: str) -> Table:
    """A reproduction summary (stats.reproduction_summary) with configs named and columns labelled."""
    shown = summary.copy()
    shown["source_trial"] = [stats.config_label(int(s)) for s in shown["source_trial"]]
    return _table(shown.rename(columns=REPRO_COLUMNS), title)


def _error(console: Console, message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)


def _storage_error(console: Console, what: str, where: str, error: Exception) -> None:
    """An unreachable database, a bad URL or a missing driver: say which storage."""
    _error(console, f"cannot read {what} from {where}: {type(error).__name__}: {error}")


# ------------------------------------------------------------------------------------------- analyze


def _analyze_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal analyze",
        description="What mattered in a sweep, and is it real: fronts, top runs vs defaults, "
        "parameter importance, seed significance; PNGs and report.html in --out.",
    )
    parser.add_argument("name", help="sweep name (its study; by default stored in sweeps/NAME.journal)")
    parser.add_argument(
        "--vs",
        metavar="OTHER",
        help="a second sweep to compare against (found like NAME, or in --vs-storage)",
    )
    parser.add_argument(
        "--vs-storage", metavar="URL", help="storage of the --vs sweep (default: as --storage)"
    )
    parser.add_argument(
        "--max-cost", type=positive_arg(float), metavar="S", help="only trials that cost at most S seconds"
    )
    parser.add_argument(
        "--min-score", type=float, metavar="X", help="list the fastest trials that reached score X"
    )
    parser.add_argument(
        "--top", type=positive_arg(int), default=10, metavar="N", help="top-N table size (default 10)"
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default sweeps/NAME-report/)")
    _add_sweep_location(parser)
    return parser


def _print_analysis(console: Console, analysis: SweepAnalysis) -> None:
    sweep = analysis.sweep
    trials = sweep.trials
    best = trials.loc[trials["score"].idxmax()] if trials["score"].notna().any() else None
    console.rule(sweep.name)
    console.print(
        f"storage {sweep.where}  env {sweep.env or '?'}  trials: {sweep.counts_text()}  "
        f"total cost {trials['cost'].sum():,.0f} s"
        + (f"  best score {best['score']:.4g} (trial #{int(best['trial'])})" if best is not None else "")
    )
    if analysis.max_cost is not None:
        console.print(f"considering {len(analysis.considered)} trial(s) with cost <= {analysis.max_cost:g} s")
    console.print(
        _table(
            stats.top_table(analysis.top, sweep.param_names, analysis.defaults),
            f"Top {len(analysis.top)} by score, with defaults",
        )
    )
    console.print(_table(analysis.param_summary, "Parameters: top runs vs the whole sweep"))
    if analysis.fastest is not None:
        if analysis.fastest.empty:
            console.print(f"no trial reached score {analysis.min_score:g}")
        else:
            fastest = analysis.fastest.head(analysis.top_n)
            shown = _metrics_frame(fastest, ["cost_to_reach", "steps_to_reach"]).rename(
                columns={"cost_to_reach": "cost to reach (s)", "steps_to_reach": "steps to reach"}
            )
            console.print(_table(shown, f"Fastest to reach score {analysis.min_score:g}"))
    if analysis.importance.ok:
        console.print(_table(analysis.importance.table, "Parameter importance for the score", index=True))
    if analysis.importance.message:
        console.print(f"[yellow]importance: {escape(analysis.importance.message)}[/yellow]", markup=True)
    _print_reproductions(console, analysis)


def _print_reproductions(console: Console, analysis: SweepAnalysis) -> None:
    sweep = analysis.sweep
    if not sweep.reproductions.empty:
        console.print(_repro_table(analysis.repro_summary, f"Seed re-runs ({sweep.name}:reproduce)"))
        _print_repro_tests(console, analysis.repro_tests)
    else:
        console.print(
            f"[dim]no seed re-runs yet: `shoal reproduce {escape(sweep.name)} --top 3 --seeds 5` tests "
            "whether the top configs really differ[/dim]",
            markup=True,
        )


def _print_repro_tests(console: Console, tests: stats.ReproductionTests) -> None:
    if tests.selection:
        console.print(f"[dim]how the best was chosen: {escape(tests.selection)}[/dim]", markup=True)
    for test in tests.tests:
        _print_verdict(console, test)


def _print_verdict(console: Console, comparison: stats.Comparison) -> None:
    style = "bold green" if comparison.significant else "bold yellow"
    console.print(
        f"[{style}]{comparison.verdict.upper()}[/{style}]: {escape(comparison.text())}", markup=True
    )


def analyze_main(argv: list[str]) -> int:
    """`shoal analyze NAME [--vs OTHER] [--storage URL] [--max-cost S] [--min-score X] [--top N] [--out DIR]`.

    Returns 0, or 1 when a sweep is missing or has no completed trial, 2 for usage errors.
    """
    args = _run_parser(_analyze_parser(), argv)
    if isinstance(args, int):
        return args
    from shoal.analysis.analyze import analyze_sweep, compare_sweeps, write_outputs

    console = _console()
    sweeps = _load_sweeps(console, args)
    if isinstance(sweeps, int):
        return sweeps
    analyses = [analyze_sweep(s, args.max_cost, args.min_score, args.top) for s in sweeps]
    between = compare_sweeps(analyses[0], analyses[1], args.top) if len(analyses) == 2 else None
    _print_fronts(console, analyses)
    for analysis in analyses:
        _print_analysis(console, analysis)
    if between is not None:
        console.rule("Is the difference between the sweeps real?")
        console.print(f"compared: {between.label}")
        for note in between.notes:
            console.print(f"[dim]{escape(note)}[/dim]", markup=True)
        if between.comparison is not None:
            _print_verdict(console, between.comparison)

    out = Path(args.out) if args.out else Path(args.sweeps_dir) / f"{args.name}-report"
    written = write_outputs(analyses, out, between)
    console.print(f"wrote {len(written)} files to {out}/ (open {out / 'report.html'})")
    return EXIT_OK


def _load_sweeps(console: Console, args: argparse.Namespace) -> list[Sweep] | int:
    """The sweep and the --vs sweep, or the exit status (the reason printed): EXIT_USAGE for a
    name or storage that cannot be read, EXIT_ERROR for a sweep with no completed trial yet."""
    try:
        sweeps = [load_sweep(args.name, args.storage, args.sweeps_dir)]
        if args.vs:
            sweeps.append(load_sweep(args.vs, args.vs_storage or args.storage, args.sweeps_dir))
    except SweepNotFoundError as e:
        _error(console, str(e))
        return EXIT_USAGE
    except StorageError:
        raise  # shoal.cli prints an unreachable storage as one line, exit 2
    except Exception as e:
        _storage_error(console, "sweeps", args.storage or f"{args.sweeps_dir}/*.journal", e)
        return EXIT_USAGE
    empty = [s for s in sweeps if s.empty]
    for sweep in empty:
        console.print(sweep.empty_message())
    return EXIT_ERROR if empty else sweeps


def _print_fronts(console: Console, analyses: list[SweepAnalysis]) -> None:
    """Both fronts of one sweep, or of two sweeps side by side."""
    if len(analyses) == 1:
        console.print(_table(_metrics_frame(analyses[0].front_cost), "Pareto front: score vs cost"))
        console.print(_table(_metrics_frame(analyses[0].front_steps), "Pareto front: score vs agent steps"))
        return
    for field, what in (("front_cost", "cost"), ("front_steps", "steps")):
        tables = [
            _table(_metrics_frame(getattr(a, field)), f"Front (score vs {what}): {a.sweep.name}")
            for a in analyses
        ]
        console.print(Columns(tables))


# ------------------------------------------------------------------------------------------- reproduce


def _reproduce_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal reproduce",
        description="Re-run a sweep's top configs over new seeds; results go to the study NAME:reproduce.",
    )
    parser.add_argument("name", help="sweep name")
    parser.add_argument(
        "--top", type=int, default=3, metavar="K", help="re-run the K best configs (default 3)"
    )
    parser.add_argument(
        "--seeds", type=positive_arg(int), default=5, metavar="S", help="seeds per config (default 5)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="also re-run this config (.toml or a run's config.json)"
    )
    parser.add_argument(
        "--max-cost",
        type=positive_arg(float),
        metavar="S",
        help="pick the top configs among trials that cost at most S seconds",
    )
    parser.add_argument(
        "--workers", type=positive_arg(int), default=1, metavar="N", help="parallel runs (default 1)"
    )
    parser.add_argument(
        "--train-fn", metavar="MODULE:FUNCTION", help="train function (default shoal.train.train)"
    )
    _add_sweep_location(parser)
    return parser


def reproduce_main(argv: list[str], train_fn: Callable[..., Any] | None = None) -> int:
    """`shoal reproduce NAME --top K --seeds S [--config FILE] [--storage URL] [--workers N]`.

    ``train_fn`` replaces shoal.train.train (same call: ``train_fn(cfg, on_epoch=...)``).
    """
    args = _run_parser(_reproduce_parser(), argv)
    if isinstance(args, int):
        return args
    from shoal.analysis.reproduce import reproduce

    console = _console()
    planned = _plan_reproduction(console, args, train_fn)
    if isinstance(planned, int):
        return planned
    sweep, jobs, train_fn = planned
    sources = sorted({j.source_trial for j in jobs}, key=lambda s: (s < 0, s))
    console.print(
        f"reproducing {', '.join(stats.config_label(s) for s in sources)} of '{sweep.name}' with "
        f"{args.seeds} new seed(s) each: {len(jobs)} run(s), {args.workers} at a time -> "
        f"study '{sweep.name}:reproduce'"
    )

    def report(outcome: Any) -> None:
        label = f"{stats.config_label(outcome.job.source_trial)} seed {outcome.job.seed}"
        if outcome.error:
            console.print(f"[red]{label}: failed[/red]: {escape(outcome.error.splitlines()[0])}", markup=True)
        else:
            console.print(f"{label}: score {outcome.score:.4g}, cost {outcome.cost:.1f} s")

    outcomes = reproduce(sweep, jobs, args.storage, args.sweeps_dir, args.workers, train_fn, report)
    updated = load_sweep(args.name, args.storage, args.sweeps_dir)
    summary = stats.reproduction_summary(updated.reproductions, updated.trials)
    if not summary.empty:
        console.print(_repro_table(summary, "Seed re-runs so far"))
        _print_repro_tests(console, stats.reproduction_tests(updated.reproductions, updated.trials))
    failed = [o for o in outcomes if o.error]
    if failed:
        console.print(
            f"[red]{len(failed)} of {len(outcomes)} run(s) failed[/red] (stored as FAIL trials with "
            "user attr 'error')",
            markup=True,
        )
        return EXIT_ERROR
    return EXIT_OK


def _plan_reproduction(
    console: Console, args: argparse.Namespace, train_fn: Callable[..., Any] | None
) -> tuple[Sweep, list[Job], Callable[..., Any] | None] | int:
    """(sweep, jobs, train function) of the re-runs asked for, or the exit status with the
    reason printed (EXIT_USAGE for input that cannot be used, EXIT_ERROR for an empty sweep)."""
    from shoal.analysis.reproduce import plan_jobs
    from shoal.core.config import ConfigError
    from shoal.sweep.runner import resolve_train_fn

    try:
        if args.train_fn:
            train_fn = resolve_train_fn(args.train_fn)
        sweep = load_sweep(args.name, args.storage, args.sweeps_dir)
        if args.top > 0 and sweep.empty:
            console.print(sweep.empty_message())
            return EXIT_ERROR
        jobs = plan_jobs(sweep, args.top, args.seeds, args.max_cost, args.config)
    except (SweepNotFoundError, ValueError, FileNotFoundError, ConfigError) as e:
        _error(console, str(e))
        return EXIT_USAGE
    except StorageError:
        raise  # shoal.cli prints an unreachable storage as one line, exit 2
    except Exception as e:
        _storage_error(
            console, f"sweep '{args.name}'", args.storage or f"{args.sweeps_dir}/{args.name}.journal", e
        )
        return EXIT_USAGE
    return sweep, jobs, train_fn


# ------------------------------------------------------------------------------------------- compare


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal compare",
        description="Learning curves of single runs against wall time and agent steps, plus a summary table.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (holding metrics.jsonl)")
    parser.add_argument(
        "--out", metavar="DIR", default="runs/compare", help="output folder (default runs/compare)"
    )
    parser.add_argument("--metric", default="score", help="metrics.jsonl key to plot (default score)")
    parser.add_argument("--min-score", type=float, metavar="X", help="report the time and steps to reach X")
    return parser


def compare_main(argv: list[str]) -> int:
    """`shoal compare RUN_DIR RUN_DIR ... [--out DIR] [--metric score] [--min-score X]`."""
    args = _run_parser(_compare_parser(), argv)
    if isinstance(args, int):
        return args
    from shoal.analysis import plots

    console = _console()
    runs = _load_runs(console, args.runs, args.metric)
    if runs is None:
        return EXIT_USAGE
    console.print(_runs_table(runs, args.metric, args.min_score))
    out = Path(args.out)
    written = [
        plots.plot_run_curves(runs, out / "compare_wall_time.png", "wall_time", args.metric, args.min_score),
        plots.plot_run_curves(
            runs, out / "compare_agent_steps.png", "agent_steps", args.metric, args.min_score
        ),
    ]
    console.print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


def _load_runs(console: Console, paths: list[str], metric: str) -> list[Run] | None:
    """The runs, named uniquely, with their notes printed; None (reason printed, exit status
    EXIT_USAGE) when a folder is unreadable or no run has `metric`."""
    from shoal.analysis.runs import RunError, load_run

    try:
        runs = [load_run(path) for path in paths]
    except RunError as e:
        _error(console, str(e))
        return None
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)
        for note in run.notes:
            console.print(f"[dim]{escape(run.name)}: {escape(note)}[/dim]", markup=True)
    missing = [run.name for run in runs if metric not in run.metrics]
    if len(missing) == len(runs):
        keys = sorted(set().union(*(set(r.metrics.columns) for r in runs)))
        console.print(
            f"[red]error:[/red] no run has metric '{escape(metric)}'; available: {', '.join(keys)}",
            markup=True,
        )
        return None
    for name in missing:
        console.print(
            f"[yellow]{escape(name)} has no metric '{escape(metric)}'; left out of the curves[/yellow]",
            markup=True,
        )
    return runs


def _runs_table(runs: list[Run], metric: str, min_score: float | None) -> Table:
    """One row per run: final and best `metric`, steps, time, speed (and the time to min_score)."""
    table = Table(title=f"Runs ({metric})", title_style="bold", header_style="bold cyan")
    for column in (
        "run",
        "env",
        f"final {metric}",
        f"best {metric}",
        "agent steps",
        "wall time (s)",
        "steps/s",
    ):
        table.add_column(column, justify="left" if column in ("run", "env") else "right")
    if min_score is not None:
        table.add_column(f"time to {min_score:g} (s)", justify="right")
        table.add_column(f"steps to {min_score:g}", justify="right")
    for run in runs:
        best = pd.to_numeric(run.metrics.get(metric, pd.Series(dtype=float)), errors="coerce").max()
        cells = [
            run.name,
            run.env or "-",
            stats.format_value(run.final(metric)),
            stats.format_value(best),
            stats.format_value(run.final("agent_steps")),
            stats.format_value(run.final("wall_time")),
            stats.format_value(run.steps_per_second()),
        ]
        if min_score is not None:
            seconds, steps = run.time_to_reach(min_score, metric)
            cells += [
                "never" if math.isnan(seconds) else stats.format_value(seconds),
                "never" if math.isnan(steps) else stats.format_value(steps),
            ]
        table.add_row(*cells)
    return table
