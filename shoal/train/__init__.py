"""Shoal's PPO trainer: `train(cfg, on_epoch=None) -> TrainResult` (docs/architecture.md §2).

Importing this package loads no torch and changes nothing in the process: `train`,
`TrainResult`, `Agent` and `load_agent` are imported on first use. That leaves the program room
to choose the OpenMP wait policy before torch loads (shoal.train.threads says how).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.train.checkpoint import Agent, load_agent
    from shoal.train.trainer import TrainResult, train

__all__ = ["Agent", "TrainResult", "load_agent", "train"]

_LAZY = {
    "Agent": "shoal.train.checkpoint",
    "load_agent": "shoal.train.checkpoint",
    "TrainResult": "shoal.train.trainer",
    "train": "shoal.train.trainer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.train' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
