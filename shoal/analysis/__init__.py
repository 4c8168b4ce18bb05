"""Reading sweeps and runs: fronts, tables, importance, significance, plots, reports.

CLI entry points (each takes an argv list and returns an exit code):
``analyze_main`` (`shoal analyze`), ``reproduce_main`` (`shoal reproduce`), ``compare_main``
(`shoal compare`). The Python API below is what they are built from.
"""

from shoal.analysis.cli import analyze_main, compare_main, reproduce_main
from shoal.analysis.runs import Run, RunError, load_run
from shoal.analysis.stats import (
    Comparison,
    Importance,
    bootstrap_ci,
    compare_samples,
    describe,
    fastest_to_score,
    filter_max_cost,
    param_defaults,
    param_importance,
    parameter_summary,
    pareto_front,
    reproduction_summary,
    top_n,
    top_table,
)
from shoal.analysis.sweeps import Sweep, SweepNotFoundError, list_sweeps, load_study, load_sweep

__all__ = [
    "Comparison",
    "Importance",
    "Run",
    "RunError",
    "Sweep",
    "SweepNotFoundError",
    "analyze_main",
    "bootstrap_ci",
    "compare_main",
    "compare_samples",
    "describe",
    "fastest_to_score",
    "filter_max_cost",
    "list_sweeps",
    "load_run",
    "load_study",
    "load_sweep",
    "param_defaults",
    "param_importance",
    "parameter_summary",
    "pareto_front",
    "reproduce_main",
    "reproduction_summary",
    "top_n",
    "top_table",
]
