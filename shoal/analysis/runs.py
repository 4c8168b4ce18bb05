"""Reading single training runs: a folder with config.json and metrics.jsonl (architecture section 2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class RunError(ValueError):
    """A run folder is missing or does not hold what a run folder should."""


@dataclass
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    skipped_lines: int = 0
    notes: list[str] = field(default_factory=list)

    def final(self, key: str) -> float:
        """Last finite value of a metric column (NaN when there is none)."""
        if key not in self.metrics:
            return math.nan
        values = pd.to_numeric(self.metrics[key], errors="coerce").dropna()
        return float(values.iloc[-1]) if len(values) else math.nan

    @property
    def env(self) -> str:
        return str(self.config.get("env", {}).get("name", "")) if isinstance(self.config, dict) else ""

    def steps_per_second(self) -> float:
        steps, wall = self.final("agent_steps"), self.final("wall_time")
        if wall > 0 and not math.isnan(steps):
            return steps / wall
        return self.final("sps")

    def time_to_reach(self, min_score: float, metric: str = "score") -> tuple[float, float]:
        """(wall seconds, agent steps) at the first epoch whose metric reached min_score; NaNs if never."""
        if metric not in self.metrics:
            return math.nan, math.nan
        values = pd.to_numeric(self.metrics[metric], errors="coerce")
        hits = self.metrics[values >= min_score]
        if hits.empty:
            return math.nan, math.nan
        first = hits.iloc[0]
        return float(first.get("wall_time", math.nan)), float(first.get("agent_steps", math.nan))


def load_run(path: str | Path) -> Run:
    """Load a run folder. metrics.jsonl is required; a torn last line (a run still writing) is skipped."""
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(f"run folder not found: {folder} (expected a folder holding metrics.jsonl)")
    metrics_path = folder / "metrics.jsonl"
    if not metrics_path.exists():
        raise RunError(f"{folder} is not a run folder: it has no metrics.jsonl")
    config: dict[str, Any] = {}
    notes = []
    config_path = folder / "config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            notes.append(f"config.json unreadable: {e}")
    else:
        notes.append("no config.json")
    rows, skipped = [], 0
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict):
            rows.append(record)
        else:
            skipped += 1
    metrics = pd.DataFrame(rows)
    for column in metrics.columns:
        converted = pd.to_numeric(metrics[column], errors="coerce")
        if converted.notna().any() or metrics[column].isna().all():
            metrics[column] = converted.astype(float)
    if skipped:
        notes.append(f"{skipped} unreadable line(s) in metrics.jsonl skipped")
    return Run(folder.resolve().name, folder, config, metrics, skipped, notes)
