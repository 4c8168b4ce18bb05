"""The adaptive-horizon advantage: credit only as far ahead as the critic can predict rewards.

The critic has, besides its scalar value, a head that predicts for every state ``s_t`` and every
lag ``k = 0 .. K-1`` a Gaussian over the reward ``r_{t+k}`` received ``k`` steps after the
current one: mean ``mu_k(s_t)`` and standard deviation ``sigma_k(s_t)``, trained by negative
log-likelihood on the rewards the rollout observed.

What counts as the reward at lag k (``lag_targets``): within the episode, the observed reward.
After a *terminal* step the episode produces nothing more, so every later lag is a known 0 (this
is how CartPole's only signal, falling over, reaches the critic). After a *truncation* (a time
limit) or past the end of the rollout the reward is unknown: those pairs are masked out of the
loss and contribute no surprise. Rewards of the next episode are never used.

The advantage of step t (``horizon_advantages``) is the discounted sum over lags k < H of the
reward surprises ``r_{t+k} - mu_k(s_t)``, each weighted by the precision share of the critic's
prediction at that lag: ``w_k = pi_k / (pi_k + pi_bar_k)`` with ``pi_k = 1 / sigma_hat_k^2``
(``sigma_hat_k``: the predicted spread, root mean square over the rollout) and
``pi_bar_k = 1 / sigma_bar_k^2`` (``sigma_bar_k``: the spread of the observed rewards at that lag
with no information at all). A lag the critic predicts sharply weighs ~1; one it predicts no
better than the overall spread weighs 1/2, and past the horizon nothing. The weight never drops to
0 inside the horizon on purpose: the variance a state-only critic cannot explain includes the
effect of the action itself (the memory env's final reward is unpredictable from the state and is
all signal), so "unpredictable" must not mean "ignored". Per lag, not per state: per-state
precision would discount exactly the states where something is about to happen (a CartPole pole
about to fall has an uncertain reward 5 steps ahead), which carry the signal. Advantages are
normalized per minibatch anyway, so only the weights' ratios matter.

The horizon ``H`` (``choose_horizon``) is the first lag whose predicted spread exceeds 0.95 of
the unconditioned spread (the prediction is no better than noise), never below
``train.min_horizon`` and never above ``train.max_horizon``. The critic's loss covers lags up to
``H + train.horizon_margin`` so it keeps learning just past the edge of what it can predict, and
the horizon can grow by up to the margin at each update.

With V-trace clips, the surprise at lag k is multiplied by the clipped importance ratios of the
k actions taken after step t, ``prod_{j=1..k} min(c_clip, ratio_{t+j})`` (those actions shaped
the reward), and the whole sum by ``min(rho_clip, ratio_t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The horizon ends at the first lag whose predicted spread is above this share of the
# unconditioned reward spread.
NOISE_RATIO = 0.95
# Predicted standard deviations never go below this (rewards are usually O(1) or clipped to
# [-1, 1]); without a floor the likelihood of a deterministic reward grows without bound.
MIN_STD = 1e-2
# A lag whose observed rewards spread less than this is deterministic: nothing to predict,
# its surprises are ~0 whatever the weight, and it does not end the horizon.
DETERMINISTIC_STD = 1e-4
# Lags with fewer valid (state, reward) pairs than this in a rollout do not decide the horizon.
MIN_PAIRS = 32


def split_head(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizon-head output ``[..., 2K]`` -> (means ``[..., K]``, standard deviations ``[..., K]``)."""
    mean, std_raw = raw.float().chunk(2, dim=-1)
    return mean, F.softplus(std_raw) + MIN_STD


def _exclusive_any(flags: torch.Tensor) -> torch.Tensor:
    """``out[..., k] = any(flags[..., :k])`` along the last dim (bool)."""
    seen = torch.cummax(flags.to(torch.uint8), dim=-1).values.bool()
    out = torch.zeros_like(seen)
    out[..., 1:] = seen[..., :-1]
    return out


def _windows(x: torch.Tensor, lags: int, fill: float) -> torch.Tensor:
    """``[A, S] -> [A, S, lags]`` with ``out[a, t, k] = x[a, t + k]`` (``fill`` past the end)."""
    padded = F.pad(x, (0, lags - 1), value=fill)
    return padded.unfold(1, lags, 1)


def lag_targets(
    rewards: torch.Tensor, dones: torch.Tensor, truncated: torch.Tensor, lags: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward at each lag of each step and whether it is known.

    ``rewards``, ``dones`` (1 where an episode ended, terminal or truncated) and ``truncated``
    are ``[agents, steps]``. Returns ``targets [agents, steps, lags]`` (float) and
    ``valid [agents, steps, lags]`` (bool), as described in the module docstring.
    """
    steps = rewards.shape[1]
    lags = max(1, min(lags, steps)) if steps else lags
    reward_w = _windows(rewards.float(), lags, 0.0)
    done_w = _windows(dones.float(), lags, 0.0) > 0.5
    trunc_w = _windows(truncated.float(), lags, 0.0) > 0.5
    in_buffer = _windows(torch.ones_like(rewards, dtype=torch.float32), lags, 0.0) > 0.5
    ended_before = _exclusive_any(done_w)
    # The episode's end is its first done; what kind of end it was decides what follows.
    first_end = done_w & ~ended_before
    terminated_before = _exclusive_any(first_end & ~trunc_w)
    targets = torch.where(ended_before, torch.zeros_like(reward_w), reward_w)
    valid = terminated_before | (in_buffer & ~ended_before)
    return targets.contiguous(), valid.contiguous()


def bootstrap_tail(
    targets: torch.Tensor, valid: torch.Tensor, dones: torch.Tensor, last_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the lags that fall past the end of the rollout with the critic's prediction from the
    rollout's last state: for ``t + k >= S`` (episode still running at ``S - 1``) the reward
    ``r_{t+k}`` is replaced by ``mu_j(s_{S-1})`` with ``j = t + k - (S - 1)``.

    Why: without it a step near the end of the rollout sees only the few lags left in the
    buffer, so its credit is cut short however far the critic can see; with it, what is still
    unknown about those lags is predicted from the most recent information, as GAE bootstraps
    from the value of the last observation. Returns (targets, valid) for the advantage; the
    critic's loss keeps the observed rewards only.
    """
    agents, steps, lags = targets.shape
    done_w = _windows(dones.float(), lags, 0.0) > 0.5
    in_buffer = _windows(torch.ones_like(dones, dtype=torch.float32), lags, 0.0) > 0.5
    offset = (
        torch.arange(steps, device=targets.device).view(steps, 1)
        + torch.arange(lags, device=targets.device).view(1, lags)
        - (steps - 1)
    )
    predicted = last_mean.shape[-1]
    tail = ~_exclusive_any(done_w) & ~in_buffer & (offset < predicted)
    index = offset.clamp(0, predicted - 1).expand(agents, steps, lags).reshape(agents, -1)
    guess = torch.gather(last_mean.float(), 1, index).view(agents, steps, lags)
    return torch.where(tail, guess, targets), valid | tail


def gaussian_nll(
    mean: torch.Tensor, std: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (without the constant) over the valid (step, lag)
    entries, each term weighted by the (constant) predicted variance to the power ``beta``
    (beta-NLL, Seitzer et al. 2022).

    Why a mean over lags rather than a per-step sum: the critic shares the policy's trunk, and a
    sum over ~H lags gives its gradient ~H times the weight of a scalar critic's at the same
    train.vf_coef. Measured on the memory env (length 3, 2 symbols, 16K steps) a sum with
    vf_coef 0.5 stayed at chance (0.45-0.48 over 2 seeds) while a mean learned it (> 0.98),
    as did a sum with vf_coef 0.05.

    Why beta = 1 by default: plain NLL scales the mean's gradient by 1 / sigma^2, and lags that
    are nearly deterministic (the zeros after a terminal step) drive sigma to its floor, so their
    gradients swamp everything else and the global gradient-norm clip then shrinks the policy's
    gradient to nothing. With beta = 1 the mean learns exactly as a squared-error critic does,
    while sigma still converges to the rewards' spread.
    """
    z = (targets - mean) / std
    nll = 0.5 * z.pow(2) + torch.log(std)
    if beta:
        nll = nll * std.detach().pow(2 * beta)
    mask = valid.float()
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class HorizonStats:
    """What the last horizon update saw, per lag (for metrics and tests)."""

    horizon: int
    weights: torch.Tensor  # [K] advantage weight per lag
    predicted_std: torch.Tensor  # [K] RMS predicted std over the rollout
    reward_std: torch.Tensor  # [K] unconditioned std of the observed rewards
    explained: float  # share of reward variance explained over lags < horizon


def choose_horizon(
    std: torch.Tensor,
    mean: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    min_horizon: int,
    max_horizon: int,
    trained_lags: int,
) -> HorizonStats:
    """The horizon and per-lag weights from a rollout's predictions ``[A, S, K]``.

    Only lags the critic was trained on (``< trained_lags``) can end the horizon; if none of them
    is noise, the horizon is ``trained_lags`` (it grows by the margin each update).
    """
    lags = targets.shape[-1]
    mask = valid.float()
    count = mask.sum(dim=(0, 1))
    safe = count.clamp(min=1.0)
    target_mean = (targets * mask).sum(dim=(0, 1)) / safe
    reward_var = ((targets - target_mean).pow(2) * mask).sum(dim=(0, 1)) / safe
    predicted_var = (std[..., :lags].pow(2) * mask).sum(dim=(0, 1)) / safe
    reward_std, predicted_std = reward_var.sqrt(), predicted_var.sqrt()

    deterministic = reward_std < DETERMINISTIC_STD
    # pi / (pi + pi_bar) = sigma_bar^2 / (sigma_bar^2 + sigma_hat^2).
    share = reward_var / (reward_var + predicted_var)
    weights = torch.where(deterministic, torch.ones_like(reward_var), share)
    noise = (predicted_std > NOISE_RATIO * reward_std) & ~deterministic & (count >= MIN_PAIRS)
    limit = min(trained_lags, lags)
    noisy = torch.nonzero(noise[:limit]).flatten()
    horizon = int(noisy[0]) if len(noisy) else limit
    horizon = min(max(min_horizon, min(horizon, max_horizon)), lags)

    surprise_var = (((targets - mean[..., :lags]) * mask)[..., :horizon].pow(2)).sum()
    total_var = (reward_var[:horizon] * count[:horizon]).sum()
    explained = float(1.0 - surprise_var / total_var) if total_var > 0 else math.nan
    return HorizonStats(horizon, weights, predicted_std, reward_std, explained)


def horizon_advantages(
    targets: torch.Tensor,
    valid: torch.Tensor,
    mean: torch.Tensor,
    weights: torch.Tensor,
    gamma: float,
    horizon: int,
    ratio: torch.Tensor | None = None,
    rho_clip: float = 1.0,
    c_clip: float = 1.0,
) -> torch.Tensor:
    """``A_t = sum_{k<H} gamma^k w_k (r_{t+k} - mu_k(s_t))`` over known lags; ``[A, S]``.

    With ``ratio [A, S]`` (pi_new / pi_behaviour of the taken actions) the V-trace clips apply
    as the module docstring says.
    """
    lags = min(horizon, targets.shape[-1])
    surprise = (targets[..., :lags] - mean[..., :lags].float()) * valid[..., :lags]
    discount = gamma ** torch.arange(lags, dtype=torch.float32, device=targets.device)
    coef = discount * weights[:lags].to(targets.device)
    if ratio is None:
        return surprise @ coef
    c = _windows(ratio.float().clamp(max=c_clip), lags, 1.0)
    # prod_{j=1..k} c_{t+j}: the actions between step t and the reward at lag k.
    traces = torch.ones_like(c)
    if lags > 1:
        traces[..., 1:] = torch.cumprod(c[..., 1:], dim=-1)
    advantages = (surprise * traces) @ coef
    return advantages * ratio.float().clamp(max=rho_clip)


def head_lags(train_cfg) -> int:
    """Lags the policy's horizon head needs for a TrainConfig (0: no head)."""
    return int(train_cfg.max_horizon) if train_cfg.advantage == "adaptive_horizon" else 0
