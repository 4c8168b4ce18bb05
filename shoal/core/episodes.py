"""Episode statistics merged across envs, workers and processes, weighted by episode counts.

Every env reports a log such as ``{"episodes": 3, "score": 12.0, "episode_length": 410.0}``:
means over the episodes that ended since the last report. Merging two logs weights each mean
by its count; this is the one place that rule is written.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any


class EpisodeLog:
    """Running count-weighted sums of episode statistics; `pop()` returns their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.episodes = 0.0

    def add(self, stats: Mapping[str, Any] | None) -> None:
        if not stats:
            return
        count = float(stats.get("episodes", 0))
        if count <= 0:
            return
        self.episodes += count
        for key, value in stats.items():
            if key != "episodes" and isinstance(value, numbers.Real):
                self.sums[key] = self.sums.get(key, 0.0) + float(value) * count

    def means(self) -> dict[str, float | int]:
        """The means so far, with ``episodes`` the count ({} when no episode ended)."""
        if self.episodes <= 0:
            return {}
        out: dict[str, float | int] = {key: total / self.episodes for key, total in self.sums.items()}
        out["episodes"] = int(self.episodes) if self.episodes.is_integer() else self.episodes
        return out

    def pop(self) -> dict[str, float | int]:
        """The means so far, then start again from nothing."""
        out = self.means()
        self.sums, self.episodes = {}, 0.0
        return out


def merge_episode_logs(logs: Iterable[Mapping[str, Any] | None]) -> dict[str, float | int]:
    """Several logs as one: each key's mean weighted by each log's ``episodes``."""
    merged = EpisodeLog()
    for log in logs:
        merged.add(log)
    return merged.means()
