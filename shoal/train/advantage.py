"""Advantage estimation over a rollout laid out as ``[agents, steps]``.

Conventions (the same everywhere in the trainer): at step ``t`` the agent saw ``obs_t`` (value
``values[:, t]``), acted, and received ``rewards[:, t]``; ``dones[:, t]`` is 1 when the episode
ended at that step. ``next_value`` is the value of the observation after the last step. A
truncated episode is turned into a terminal one by adding ``gamma * V(final_obs)`` to its last
reward (the trainer does this), so only ``dones`` is needed here.
"""

from __future__ import annotations

import torch


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
