"""The adaptive-horizon advantage: credit only as far ahead as the critic can predict rewards.

The critic is a head on the policy's features (:class:`HorizonHead`, held by the policy as its
``aux_head``) that predicts for every state ``s_t`` and every lag ``k = 0 .. K-1`` a Gaussian
over the reward ``r_{t+k}`` received ``k`` steps after the current one: mean ``mu_k(s_t)`` and
standard deviation ``sigma_k(s_t)``, trained by negative log-likelihood on the rewards the
rollout observed. :class:`HorizonEstimator` puts the pieces behind the advantage-estimator
interface of shoal.train.advantage; nothing else in the trainer knows this method exists.

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
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shoal.core.config import ConfigError
from shoal.train.losses import LossTerms

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
    train.vf_coef, enough to keep the policy from learning (docs/adaptive_horizon.md).

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


class HorizonHead(nn.Module):
    """The per-lag reward critic: a linear map from the policy's features to, for each of
    ``max_lags`` lags, a mean and a standard-deviation parameter (``[..., 2 * max_lags]``: all
    the means, then all the std parameters; see :func:`split_head`).

    The policy holds it as its ``aux_head``. Orthogonal init with gain 0.01 and zero bias: the
    first predictions are ~0 with the same spread at every lag, as a freshly initialized actor's
    logits are near uniform.
    """

    def __init__(self, hidden_size: int, max_lags: int) -> None:
        super().__init__()
        if max_lags < 1:
            raise ValueError(f"the horizon head needs at least 1 lag, got {max_lags}")
        self.max_lags = max_lags
        self.weight = nn.Parameter(torch.empty(2 * max_lags, hidden_size))
        self.bias = nn.Parameter(torch.zeros(2 * max_lags))
        nn.init.orthogonal_(self.weight, 0.01)

    def forward(self, features: torch.Tensor, lags: int) -> torch.Tensor:
        """The head for the first `lags` lags only: ``[..., 2 * lags]``. Why not the whole head:
        only the lags up to the horizon plus its margin are used, and computing just those keeps
        a large maximum horizon free."""
        k = self.max_lags
        if not 0 < lags <= k:
            raise ValueError(f"lags must be in 1..{k}, got {lags}")
        weight, bias = self.weight, self.bias
        if lags < k:
            weight = torch.cat([weight[:lags], weight[k : k + lags]])
            bias = torch.cat([bias[:lags], bias[k : k + lags]])
        return F.linear(features, weight, bias)


# Runs a function of the policy's features over the whole buffer, chunk by chunk, without
# gradients; returns its outputs in buffer order (shoal.train.learner.Learner provides it).
BufferForward = Callable[[Callable[[torch.Tensor], torch.Tensor]], list[torch.Tensor]]


def check_horizon_config(train_cfg: Any) -> None:
    """ConfigError unless 1 <= train.min_horizon <= train.max_horizon and train.horizon_margin >= 0."""
    t = train_cfg
    if not 1 <= t.min_horizon <= t.max_horizon:
        raise ConfigError(
            "train.min_horizon and train.max_horizon must satisfy 1 <= min <= max, "
            f"got {t.min_horizon}, {t.max_horizon}"
        )
    if t.horizon_margin < 0:
        raise ConfigError(f"train.horizon_margin must be >= 0, got {t.horizon_margin}")


class HorizonEstimator:
    """The adaptive-horizon advantage estimator (train.advantage = "adaptive_horizon"); see the
    module docstring. Implements shoal.train.advantage.AdvantageEstimator.

    Its critic is :class:`HorizonHead` (``aux_head``); PPO's scalar value head stays in the
    policy but is not trained (``value_coef`` 0) and its values are only placeholders.
    """

    # Nothing to bootstrap a truncated episode with (no scalar value): the rewards after a
    # truncation are masked out instead (lag_targets).
    bootstrap_truncation = False
    value_coef = 0.0

    def __init__(self, train_cfg: Any, hidden_size: int) -> None:
        check_horizon_config(train_cfg)
        self.cfg = train_cfg
        self.uses_ratios = bool(train_cfg.vtrace)
        self.aux_head = HorizonHead(hidden_size, train_cfg.max_horizon)
        self.horizon = train_cfg.min_horizon
        # Lags that can be observed: max_horizon, capped by the rollout's steps per agent (set
        # when the first buffer is seen).
        self.lags: int | None = None
        self.trained = 0
        self.horizon_stats: HorizonStats | None = None

    def trained_lags(self) -> int:
        """Lags in the critic's loss: the horizon plus the margin it may grow into."""
        return min(self.lags, self.horizon + self.cfg.horizon_margin)

    def _first_buffer(self, buffer: Any) -> None:
        steps, max_horizon = buffer.steps, self.cfg.max_horizon
        if max_horizon > steps:
            print(
                f"warning: train.max_horizon ({max_horizon}) is more than the rollout's {steps} steps per "
                f"agent (train.batch_size / agents); lags past {steps} are never observed, so the horizon "
                f"stops at {steps}. Raise train.batch_size or lower env.num_envs for a longer one.",
                file=sys.stderr,
                flush=True,
            )
        self.lags = min(max_horizon, steps)
        # A horizon restored from a checkpoint was chosen within the same bounds.
        self.horizon = max(1, min(self.horizon, self.lags))

    def prepare(self, buffer: Any, forward: BufferForward) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of this rollout, the critic's predictions, and from them the horizon; returns
        the first (advantages, returns).

        Everything is computed for the lags the critic was trained on (``seen``) only: the new
        horizon cannot pass them, so the advantage never needs more, and the cost does not grow
        with train.max_horizon. The loss targets reach one margin further (the new horizon's)."""
        if self.lags is None:
            self._first_buffer(buffer)
        cfg, buf = self.cfg, buffer
        self.buffer = buffer
        seen = self.trained_lags()
        targets, valid = lag_targets(
            buf.rewards, buf.dones, buf.truncated, min(self.lags, seen + cfg.horizon_margin)
        )
        self.pred_mean, std = self._predict(forward, seen)
        seen_targets, seen_valid = targets[..., :seen], valid[..., :seen]
        self.horizon_stats = choose_horizon(
            std, self.pred_mean, seen_targets, seen_valid, cfg.min_horizon, self.lags, seen
        )
        self.horizon = self.horizon_stats.horizon
        self.adv_targets, self.adv_valid = bootstrap_tail(
            seen_targets, seen_valid, buf.dones, self.pred_mean[:, -1]
        )
        self.trained = trained = self.trained_lags()
        self.targets_seg = targets[..., :trained].reshape(buf.num_segments, buf.horizon, trained)
        self.valid_seg = valid[..., :trained].reshape(buf.num_segments, buf.horizon, trained)
        return self.refresh()

    def _predict(self, forward: BufferForward, lags: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's (means, stds) ``[agents, steps, lags]`` over the whole buffer."""
        buf = self.buffer
        heads = [split_head(raw) for raw in forward(lambda features: self.aux_head(features, lags))]
        shape = (buf.num_agents, buf.steps, lags)
        means = torch.cat([mean for mean, _ in heads]).view(shape)
        stds = torch.cat([std for _, std in heads]).view(shape)
        return means, stds

    def refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns) ``[agents, steps]`` with the buffer's latest ratios."""
        cfg, buf = self.cfg, self.buffer
        advantages = horizon_advantages(
            self.adv_targets,
            self.adv_valid,
            self.pred_mean,
            self.horizon_stats.weights,
            cfg.gamma,
            self.horizon,
            buf.ratio if cfg.vtrace else None,
            cfg.vtrace_rho_clip,
            cfg.vtrace_c_clip,
        )
        # The scalar value head is not trained: its targets are its own old values.
        return advantages, buf.values

    def aux_outputs(self, features: torch.Tensor) -> torch.Tensor:
        return self.aux_head(features, self.trained)

    def critic_loss(
        self, terms: LossTerms, aux: torch.Tensor | None, chunk: torch.Tensor | None
    ) -> LossTerms:
        """The critic's loss is the likelihood of the rewards at the lags it is trained on."""
        mean, std = split_head(aux)
        targets, valid = self.targets_seg, self.valid_seg
        if chunk is not None:
            targets, valid = targets[chunk], valid[chunk]
        terms.value_loss = gaussian_nll(mean, std, targets, valid)
        terms.loss = terms.loss + self.cfg.vf_coef * terms.value_loss
        return terms

    def stats(self) -> dict[str, float]:
        return {"explained_variance": self.horizon_stats.explained, "horizon": float(self.horizon)}

    def state_dict(self) -> dict[str, Any]:
        return {"horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("horizon") is not None:
            self.horizon = int(state["horizon"])
