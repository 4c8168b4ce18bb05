"""Shoal's PPO trainer: `train(cfg, on_epoch=None) -> TrainResult` (docs/architecture.md §2).

Importing this package loads no torch: `train`, `TrainResult`, `Agent` and `load_agent` are
imported on first use. That leaves room to choose the OpenMP wait policy first (libgomp reads
OMP_WAIT_POLICY only when torch loads; see shoal.train.threads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.train import threads as _threads

# Idle OpenMP workers otherwise spin after each parallel region, stealing the cores the C envs
# step on: PASSIVE unless the user set a policy (a no-op when torch is already loaded).
_threads.prepare_wait_policy("auto")

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
