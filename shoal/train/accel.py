"""Opt-in ways to run the policy faster, applied once where the loop is set up: bfloat16
autocast (train.precision) and torch.compile (train.compile). The CUDA graph of the rollout's
inference step is in shoal.train.cuda_graph, the thread policy in shoal.train.threads."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from shoal.core.config import TrainConfig


def autocast_for(precision: str, device: torch.device) -> Callable[..., Any] | None:
    """A factory of autocast contexts for a resolved train.precision, or None for float32.

    The policy's heads leave autocast inside it (see Policy._heads): values and log-probabilities
    are float32 in every path, compiled and CUDA-graphed ones included."""
    if precision != "bfloat16":
        return None
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def policy_functions(policy: Any, train_cfg: TrainConfig) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(rollout step, training forward) of `policy`: its own methods, or compiled ones with
    train.compile."""
    if not train_cfg.compile:
        return policy.step, policy.forward_sequence
    # reduce-overhead's CUDA graphs are for the training pass: the rollout keeps its recurrent
    # state across calls and resets it in place, and has its own graph (train.cuda_graph).
    step_mode = "default" if train_cfg.compile_mode == "reduce-overhead" else train_cfg.compile_mode
    return (
        torch.compile(policy.step, mode=step_mode),
        torch.compile(policy.forward_sequence, mode=train_cfg.compile_mode),
    )
