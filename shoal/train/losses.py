"""The PPO loss: clipped policy objective, clipped value loss, entropy bonus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LossTerms:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio: torch.Tensor


def normalize_advantages(
    advantages: torch.Tensor,
    eps: float = 1e-8,
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(A - mean) / (std + eps) over the minibatch (std with Bessel's correction).

    `all_sum`, in data-parallel training, sums a tensor over the processes: the mean and std are
    then those of the whole minibatch, of which each process holds a part, so the update is the
    one a single process would make."""
    if all_sum is None:
        if advantages.numel() < 2:
            return advantages - advantages.mean()
        return (advantages - advantages.mean()) / (advantages.std() + eps)
    flat = advantages.detach().double().reshape(-1)
    moments = torch.stack([flat.new_tensor(flat.numel()), flat.sum(), flat.square().sum()])
    count, total, squares = all_sum(moments)
    mean = total / count
    if count < 2:
        return advantages - mean.to(advantages.dtype)
    var = ((squares - count * mean * mean) / (count - 1)).clamp_min(0.0)
    return (advantages - mean.to(advantages.dtype)) / (var.sqrt().to(advantages.dtype) + eps)


def ppo_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_coef: float,
    vf_clip_coef: float,
    vf_coef: float,
    ent_coef: float,
) -> LossTerms:
    """PPO loss terms, averaged over all elements given.

    ``advantages`` are used as given (normalize and weight them before). A ``vf_clip_coef`` <= 0
    disables value clipping.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    policy_loss = torch.max(unclipped, clipped).mean()

    value_error = (new_values - returns).pow(2)
    if vf_clip_coef > 0:
        clipped_values = old_values + (new_values - old_values).clamp(-vf_clip_coef, vf_clip_coef)
        value_error = torch.max(value_error, (clipped_values - returns).pow(2))
    value_loss = 0.5 * value_error.mean()

    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        # The low-variance KL estimator (ratio - 1) - log ratio, always >= 0.
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return LossTerms(loss, policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction, ratio)
