"""Shoal's PPO trainer: `train(cfg, on_epoch=None) -> TrainResult` (docs/architecture.md §2)."""

import os

# Idle OpenMP workers otherwise spin for a while after each parallel region, stealing the cores
# the C envs step on. The pools read this when torch first loads, hence before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from shoal.train.checkpoint import Agent, load_agent  # noqa: E402
from shoal.train.trainer import TrainResult, train  # noqa: E402

__all__ = ["Agent", "TrainResult", "load_agent", "train"]
