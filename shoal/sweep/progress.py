"""The live view of a running sweep and the final table of its Pareto front."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.sweep.pareto import study_front


def _short(key: str) -> str:
    return key.split(".", 1)[1] if "." in key else key


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def summary(trials: list[FrozenTrial], target: int, workers: int, elapsed: float) -> dict[str, Any]:
    """The numbers the live view shows (also handy for logs and tests)."""
    from shoal.sweep.runner import count_states

    counts = count_states(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    best = max((t.values[0] for t in done), default=math.nan)
    costs = [t.values[1] for t in done]
    remaining = max(target - counts["finished"], 0)
    # Remaining runs at the mean cost so far, spread over the workers.
    eta = remaining * (sum(costs) / len(costs)) / max(workers, 1) if costs else math.nan
    return {
        **counts,
        "target": target,
        "best_score": best,
        "front_size": len(study_front(trials)),
        "eta_seconds": eta if remaining else 0.0,
        "elapsed": elapsed,
    }


def render(study_name: str, info: dict[str, Any]) -> Table:
    table = Table(title=f"shoal sweep [bold]{study_name}[/bold]", show_header=False, expand=False)
    table.add_column(style="cyan")
    table.add_column()
    done = f"{info['finished']}/{info['target']}"
    if info["pruned"]:
        done += f" ({info['pruned']} stopped early)"
    table.add_row("trials done", done)
    table.add_row(
        "running", str(info["running"]) + (f" (+{info['waiting']} queued)" if info["waiting"] else "")
    )
    table.add_row(
        "failed", str(info["failed"]) + (f" (+{info['requeued']} re-queued)" if info["requeued"] else "")
    )
    table.add_row("best score", _fmt(info["best_score"]) if math.isfinite(info["best_score"]) else "-")
    table.add_row("front size", str(info["front_size"]))
    table.add_row("elapsed", _duration(info["elapsed"]))
    table.add_row("time left (est.)", _duration(info["eta_seconds"]))
    return table


def front_table(trials: list[FrozenTrial], title: str = "Pareto front (cost vs score)") -> Table:
    table = Table(title=title)
    for name in ("trial", "score", "cost (s)", "agent steps", "params"):
        table.add_column(name, justify="right" if name != "params" else "left")
    for t in study_front(trials):
        params = " ".join(f"{_short(k)}={_fmt(v)}" for k, v in t.params.items())
        steps = t.user_attrs.get("agent_steps")
        table.add_row(str(t.number), _fmt(t.values[0]), f"{t.values[1]:.1f}", _fmt(steps), params)
    return table


class LiveProgress:
    """Refreshes at most once a second from whatever process calls `tick(study)`."""

    def __init__(self, name: str, target: int, workers: int, console: Console | None = None):
        self.name = name
        self.target = target
        self.workers = workers
        self.console = console or Console()
        self.start = time.monotonic()
        self.last = -math.inf
        self.live = Live(console=self.console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def tick(self, study: optuna.Study, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        info = summary(study.get_trials(deepcopy=False), self.target, self.workers, now - self.start)
        self.live.update(Group(render(self.name, info), Text("")), refresh=True)
