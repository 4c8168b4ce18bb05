"""Advantage estimation over a rollout laid out as ``[agents, steps]``, and the estimators the
learner uses: interchangeable objects chosen by ``train.advantage`` (:func:`make_estimator`).

Conventions (the same everywhere in the trainer): at step ``t`` the agent saw ``obs_t`` (value
``values[:, t]``), acted, and received ``rewards[:, t]``; ``dones[:, t]`` is 1 when the episode
ended at that step. ``next_value`` is the value of the observation after the last step. A
truncated episode is turned into a terminal one by adding ``gamma * V(final_obs)`` to its last
reward (the Collector does this for an estimator with ``bootstrap_truncation``), so only
``dones`` is needed here.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from shoal.core.config import ConfigError
from shoal.train.horizon import BufferForward, HorizonEstimator
from shoal.train.losses import LossTerms


def gae(
    values: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Generalized advantage estimation; returns advantages ``[agents, steps]``."""
    ratio = torch.ones_like(values)
    return vtrace_advantages(values, rewards, dones, next_value, ratio, gamma, gae_lambda, 1.0, 1.0)


def vtrace_advantages(
    values: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    ratio: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    rho_clip: float,
    c_clip: float,
) -> torch.Tensor:
    """GAE with V-trace importance clipping: ``A_t = rho_t delta_t + gamma lambda c_t A_{t+1}``.

    ``rho_t = min(ratio_t, rho_clip)`` and ``c_t = min(ratio_t, c_clip)`` where ``ratio`` is
    pi_current / pi_behaviour of the taken actions. On-policy (ratio 1) with clips >= 1 this is
    GAE(lambda); ``A + V`` is the V-trace target ``v_t`` when lambda is 1.
    """
    steps = values.shape[1]
    values = values.float()
    not_done = 1.0 - dones.float()
    rho = ratio.float().clamp(max=rho_clip)
    c = ratio.float().clamp(max=c_clip) * (gamma * gae_lambda)
    next_values = torch.cat([values[:, 1:], next_value.float().reshape(-1, 1)], dim=1)
    deltas = rho * (rewards.float() + gamma * next_values * not_done - values)
    # Time-major and contiguous so that each step of the recursion is one fused kernel over
    # all agents, written in place.
    deltas = deltas.t().contiguous()
    decay = (c * not_done).t().contiguous()
    advantages = torch.empty_like(deltas)
    advantages[steps - 1] = deltas[steps - 1]
    for t in range(steps - 2, -1, -1):
        torch.addcmul(deltas[t], decay[t], advantages[t + 1], out=advantages[t])
    return advantages.t().contiguous()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] (NaN when the returns do not vary)."""
    var = returns.float().var()
    if var.item() == 0:
        return float("nan")
    return float(1.0 - (returns.float() - values.float()).var() / var)


class AdvantageEstimator(Protocol):
    """What the learner asks of an advantage estimator, once per update:

    ``prepare`` reads the new rollout (the buffer's ratios are all 1) and returns its
    (advantages, returns) ``[agents, steps]``; the returns are the targets of PPO's scalar value
    loss, weighted by ``value_coef``. When ``uses_ratios`` the learner records each trained
    step's latest pi_new / pi_behaviour in ``buffer.ratio`` and calls ``refresh`` before every
    minibatch after the first. Per chunk of segments, ``critic_loss`` folds the estimator's own
    critic loss into PPO's terms; an estimator with an ``aux_head`` gets, through
    ``aux_outputs``, that head's output on the policy's features of the chunk (computed under the
    learner's autocast). ``stats`` are logged with the losses; ``state_dict`` is checkpointed.
    """

    aux_head: nn.Module | None  # given to make_policy: trained, saved and broadcast with it
    bootstrap_truncation: bool  # whether the Collector adds gamma * V(final obs) at a truncation
    uses_ratios: bool
    value_coef: float

    def prepare(self, buffer: Any, forward: BufferForward) -> tuple[torch.Tensor, torch.Tensor]: ...

    def refresh(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def aux_outputs(self, features: torch.Tensor) -> torch.Tensor: ...

    def critic_loss(
        self, terms: LossTerms, aux: torch.Tensor | None, chunk: torch.Tensor | None
    ) -> LossTerms: ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GAEEstimator:
    """GAE(lambda) on PPO's scalar critic; with train.vtrace, V-trace's clipped importance
    ratios, recomputed before every minibatch from the latest ones."""

    aux_head = None
    bootstrap_truncation = True

    def __init__(self, train_cfg: Any) -> None:
        self.cfg = train_cfg
        self.uses_ratios = bool(train_cfg.vtrace)
        self.value_coef = train_cfg.vf_coef
        self.explained = math.nan

    def prepare(self, buffer: Any, forward: BufferForward) -> tuple[torch.Tensor, torch.Tensor]:
        self.buffer = buffer
        advantages, returns = self.refresh()
        self.explained = explained_variance(buffer.values, returns)
        return advantages, returns

    def refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, buf = self.cfg, self.buffer
        if cfg.vtrace:
            advantages = vtrace_advantages(
                buf.values,
                buf.rewards,
                buf.dones,
                buf.next_value,
                buf.ratio,
                cfg.gamma,
                cfg.gae_lambda,
                cfg.vtrace_rho_clip,
                cfg.vtrace_c_clip,
            )
        else:
            advantages = gae(buf.values, buf.rewards, buf.dones, buf.next_value, cfg.gamma, cfg.gae_lambda)
        return advantages, advantages + buf.values

    def aux_outputs(self, features: torch.Tensor) -> torch.Tensor:
        raise TypeError("the GAE estimator has no auxiliary head")

    def critic_loss(
        self, terms: LossTerms, aux: torch.Tensor | None, chunk: torch.Tensor | None
    ) -> LossTerms:
        # The critic is the scalar value head, already in PPO's value loss.
        return terms

    def stats(self) -> dict[str, float]:
        return {"explained_variance": self.explained}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Stateless: whatever another estimator saved does not apply.
        pass


ESTIMATORS = ("gae", "adaptive_horizon")


def make_estimator(train_cfg: Any, hidden_size: int) -> AdvantageEstimator:
    """The estimator `train_cfg.advantage` names, for a policy of `hidden_size` features; raises
    ConfigError for a bad value of any of its keys."""
    t = train_cfg
    if not (0.0 <= t.gamma <= 1.0 and 0.0 <= t.gae_lambda <= 1.0):
        raise ConfigError(
            f"train.gamma and train.gae_lambda must be in [0, 1], got {t.gamma}, {t.gae_lambda}"
        )
    if t.vtrace and (t.vtrace_rho_clip <= 0 or t.vtrace_c_clip <= 0):
        raise ConfigError(
            f"train.vtrace_rho_clip and train.vtrace_c_clip must be positive, "
            f"got {t.vtrace_rho_clip}, {t.vtrace_c_clip}"
        )
    if t.advantage == "gae":
        return GAEEstimator(t)
    if t.advantage == "adaptive_horizon":
        return HorizonEstimator(t, hidden_size)
    raise ConfigError(
        f"train.advantage must be one of {', '.join(map(repr, ESTIMATORS))}, got {t.advantage!r}"
    )
