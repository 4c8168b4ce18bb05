"""Synthetic cost-aware problems: cheap stand-ins for training runs.

Each problem is a function of a few config keys where the reachable score grows with the run
length (train.total_steps) and the best settings of the other keys are unknown to the sampler.
They serve the sweep efficiency benchmark (simulated cost, no waiting) and the sweep tests
(`SyntheticTrainer` follows the trainer contract so whole sweeps run in milliseconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal.core.config import Config
from shoal.sweep.space import config_values


@dataclass(frozen=True)
class Problem:
    """score(params, steps) in [0, 1] (before noise); cost(params, steps) in simulated seconds."""

    name: str
    space: dict[str, dict[str, Any]]
    quality: Callable[[dict[str, Any]], float]
    # Agent steps needed to get ~63% of the way to the run's quality.
    time_constant: Callable[[dict[str, Any]], float]
    steps_per_second: Callable[[dict[str, Any]], float]
    noise: float = 0.02

    def score(self, params: dict[str, Any], steps: float) -> float:
        return self.quality(params) * (1.0 - math.exp(-steps / self.time_constant(params)))

    def curve(
        self, params: dict[str, Any], rng: np.random.Generator, epochs: int = 10, run_noise: float = 0.0
    ) -> list[tuple[float, float, float]]:
        """(cost_seconds, agent_steps, noisy score) after each of `epochs` equal parts of the run.

        `run_noise` is the standard deviation of an offset shared by all points of the run (a
        seed's luck, which real curves have): it makes the points of one curve correlated.
        """
        total = float(params["train.total_steps"])
        sps = self.steps_per_second(params)
        offset = rng.normal(0.0, run_noise) if run_noise > 0 else 0.0
        points = []
        for e in range(1, epochs + 1):
            steps = total * e / epochs
            noisy = self.score(params, steps) + offset + rng.normal(0.0, self.noise)
            points.append((steps / sps, steps, noisy))
        return points

    @property
    def cost_range(self) -> tuple[float, float]:
        """Rough (cheapest, most expensive) run cost, for normalizing hypervolumes."""
        lo = self.space["train.total_steps"]["min"]
        hi = self.space["train.total_steps"]["max"]
        return lo / 2e5, hi / 2e4


def _bump(x: float, center: float, width: float) -> float:
    return math.exp(-(((x - center) / width) ** 2))


def _ppo_quality(p: dict[str, Any]) -> float:
    lr = _bump(math.log10(p["train.learning_rate"]), -2.6, 0.8)
    gamma = _bump(math.log10(1 - p["train.gamma"]), -2.2, 0.9)
    ent = _bump(math.log10(p["train.ent_coef"]), -2.5, 1.5)
    # Wider networks reach a higher ceiling.
    width = 0.7 + 0.3 * math.log2(p["policy.hidden_size"] / 32) / 4
    return lr * gamma * ent * width


def _ppo_time_constant(p: dict[str, Any]) -> float:
    # Higher learning rates learn faster (up to where they stop learning at all).
    return 3e6 * (1e-3 / p["train.learning_rate"]) ** 0.5


def _ppo_sps(p: dict[str, Any]) -> float:
    return 2e5 / (1 + p["policy.hidden_size"] / 128)


def _bowl_quality(p: dict[str, Any]) -> float:
    target = {
        "train.clip_coef": 0.3,
        "train.vf_coef": 1.2,
        "train.max_grad_norm": 0.8,
        "train.gae_lambda": 0.9,
    }
    scales = {
        "train.clip_coef": 0.2,
        "train.vf_coef": 2.0,
        "train.max_grad_norm": 1.5,
        "train.gae_lambda": 0.15,
    }
    dist = sum(((p[k] - target[k]) / scales[k]) ** 2 for k in target)
    return math.exp(-dist)


PROBLEMS: dict[str, Problem] = {
    "ppo_like": Problem(
        name="ppo_like",
        space={
            "train.learning_rate": {"distribution": "log", "min": 1e-5, "max": 1e-1},
            "train.gamma": {"distribution": "logit", "min": 0.8, "max": 0.9999},
            "train.ent_coef": {"distribution": "log", "min": 1e-5, "max": 1e-1},
            "policy.hidden_size": {"distribution": "pow2", "min": 32, "max": 512},
            "train.total_steps": {"distribution": "log", "min": 1_000_000, "max": 100_000_000},
        },
        quality=_ppo_quality,
        time_constant=_ppo_time_constant,
        steps_per_second=_ppo_sps,
    ),
    "bowl": Problem(
        name="bowl",
        space={
            "train.clip_coef": {"distribution": "uniform", "min": 0.05, "max": 0.5},
            "train.vf_coef": {"distribution": "log", "min": 0.05, "max": 5.0},
            "train.max_grad_norm": {"distribution": "log", "min": 0.1, "max": 5.0},
            "train.gae_lambda": {"distribution": "logit", "min": 0.6, "max": 0.995},
            "train.total_steps": {"distribution": "log", "min": 1_000_000, "max": 100_000_000},
        },
        quality=_bowl_quality,
        time_constant=lambda p: 1e7,
        steps_per_second=lambda p: 1e5,
    ),
}


@dataclass
class SyntheticResult:
    run_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class SyntheticTrainer:
    """A stand-in for shoal.train.train(cfg, on_epoch) that follows a synthetic problem.

    Options read from cfg.env.options (so they can be set with --env.options.NAME flags):
    `epoch_seconds` (sleep per epoch, default 0), `seconds_per_mstep` (extra sleep per million
    agent steps, so cost grows with run length), `epochs` (per run, default 10),
    `diverge_above_lr` (losses become NaN above this learning rate), `crash_above_lr` (raise).
    """

    def __init__(self, problem: str = "ppo_like"):
        if problem not in PROBLEMS:
            raise ValueError(f"unknown synthetic problem {problem!r}; expected one of {', '.join(PROBLEMS)}")
        self.problem = PROBLEMS[problem]

    def __call__(self, cfg: Config, on_epoch: Callable[[dict], Any] | None = None) -> SyntheticResult:
        options = cfg.env.options
        epochs = int(options.get("epochs", 10))
        total = cfg.train.total_steps
        pause = float(options.get("epoch_seconds", 0.0))
        pause += float(options.get("seconds_per_mstep", 0.0)) * total / epochs / 1e6
        lr = cfg.train.learning_rate
        crash = options.get("crash_above_lr")
        if crash is not None and lr > float(crash):
            raise RuntimeError(f"synthetic crash: learning rate {lr:g} above {float(crash):g}")
        diverge = options.get("diverge_above_lr")
        diverged = diverge is not None and lr > float(diverge)
        params = config_values(cfg, list(self.problem.space))
        rng = np.random.default_rng(cfg.train.seed)
        start = time.monotonic()
        history: list[dict[str, Any]] = []
        for epoch in range(1, epochs + 1):
            if pause:
                time.sleep(pause)
            steps = total * epoch // epochs
            score = self.problem.score(params, steps) + rng.normal(0.0, self.problem.noise)
            loss = math.nan if diverged and epoch >= 2 else 1.0 / epoch
            elapsed = time.monotonic() - start
            metrics = {
                "epoch": epoch,
                "agent_steps": steps,
                "wall_time": elapsed,
                "sps": steps / max(elapsed, 1e-9),
                "score": score,
                "policy_loss": loss,
                "value_loss": loss,
            }
            history.append(metrics)
            if on_epoch is not None and on_epoch(metrics) is False:
                break
        return SyntheticResult(run_dir="", metrics=history[-1], history=history)


def synthetic_train(cfg: Config, on_epoch: Callable[[dict], Any] | None = None) -> SyntheticResult:
    """SyntheticTrainer('ppo_like') as a plain function (usable as --train-fn)."""
    return SyntheticTrainer("ppo_like")(cfg, on_epoch)
