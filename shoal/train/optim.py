"""Optimizers (Adam, AdamW, Muon + Adam) and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "cosine")
# The KL controller's step: one pass whose KL is off target by 2x scales the rate by 1.5 (the
# rule of Schulman et al. 2017's adaptive KL penalty, applied to the step size instead).
KL_STEP = 1.5
# The controller never shrinks the scheduled rate below this fraction of it, so a burst of
# large updates cannot stall learning for good.
KL_MIN_FACTOR = 0.01


def lr_factor(
    progress: float, schedule: str, warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the base learning rate at `progress` in [0, 1] of training.

    Linear warmup from 0 over the first `warmup_fraction`, then `schedule` from 1 down to
    `min_lr_ratio` (constant stays at 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min lr ratio must be in [0, 1], got {min_lr_ratio}")
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return progress / warmup_fraction
    if schedule == "constant":
        return 1.0
    decay = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    shape = 1.0 - decay if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * decay))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def kl_adapted(factor: float, kl: float, target: float) -> float:
    """The KL controller's next multiplier of the scheduled learning rate, after a pass over the
    rollout whose mean approx KL was `kl`: smaller when `kl` is above twice `target`, larger
    (never above 1: the schedule is the ceiling) when below half of it."""
    if target <= 0:
        raise ValueError(f"target KL must be positive, got {target}")
    if not math.isfinite(kl):
        return KL_MIN_FACTOR
    if kl > 2.0 * target:
        factor /= KL_STEP
    elif kl < 0.5 * target:
        factor *= KL_STEP
    return min(1.0, max(KL_MIN_FACTOR, factor))


class Optimizers:
    """One or two torch optimizers stepped together, each param group with a `base_lr`.

    The schedule sets ``lr = base_lr * factor`` on every group, so per-group learning-rate
    multipliers (muP) survive scheduling: set a group's ``base_lr``.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr_factor(self, factor: float) -> None:
        for group in self.param_groups:
            # lr_scale: the group's muP multiplier (shoal.mup.regroup); 1 when absent.
            group["lr"] = group["base_lr"] * factor * group.get("lr_scale", 1.0)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(
                f"checkpoint has {len(states)} optimizer states, expected {len(self.optimizers)}"
            )
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def make_optimizer(policy: nn.Module, train_cfg) -> Optimizers:
    """Adam / AdamW over all parameters, or Muon for hidden 2-D matrices plus Adam for the rest.

    `policy` must offer ``parameter_groups()`` (see shoal.policy.Policy) for Muon.
    """
    name = train_cfg.optimizer
    lr = train_cfg.learning_rate
    betas = (train_cfg.beta1, train_cfg.beta2)
    if lr <= 0:
        raise ValueError(f"train.learning_rate must be positive, got {lr}")
    adam_settings = {"betas": betas, "eps": train_cfg.eps, "weight_decay": train_cfg.weight_decay}
    if name in ("adam", "adamw"):
        adam_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        params = [p for p in policy.parameters() if p.requires_grad]
        # Fused kernels update every parameter in a few launches: less overhead for small models.
        return Optimizers([adam_class(params, lr=lr, fused=True, **adam_settings)])
    if name == "muon":
        groups = policy.parameter_groups()
        hidden = [p for _, p in groups["hidden"]]
        rest = [p for key in ("input", "output", "other") for _, p in groups[key]]
        opts: list[torch.optim.Optimizer] = []
        if hidden:
            # Muon's own learning-rate scale (orthogonalized updates, RMS ~ 1/sqrt(width)): its
            # usual rates (~0.02) are far above Adam's, hence muon_adam_lr_ratio for the rest.
            opts.append(
                torch.optim.Muon(
                    hidden, lr=lr, weight_decay=train_cfg.weight_decay, momentum=train_cfg.muon_momentum
                )
            )
        adam_lr = lr * train_cfg.muon_adam_lr_ratio
        opts.append(torch.optim.AdamW(rest, lr=adam_lr, foreach=True, **adam_settings))
        return Optimizers(opts)
    raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'muon', got {name!r}")
