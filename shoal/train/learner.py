"""The PPO update over one epoch's buffer: minibatches of segments, V-trace, prioritized
sampling, gradient accumulation, gradient clipping and the learning-rate schedule. The advantage
is GAE (V-trace) with a scalar critic, or the adaptive horizon (shoal.train.horizon) with a
per-lag reward critic."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from shoal.policy import Policy, evaluate_actions
from shoal.train.advantage import gae, vtrace_advantages
from shoal.train.horizon import (
    HorizonStats,
    bootstrap_tail,
    choose_horizon,
    gaussian_nll,
    horizon_advantages,
    lag_targets,
    split_head,
)
from shoal.train.losses import normalize_advantages, ppo_loss
from shoal.train.optim import Optimizers, lr_factor
from shoal.train.rollout import RolloutBuffer

LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] (NaN when the returns do not vary)."""
    var = returns.float().var()
    if var.item() == 0:
        return float("nan")
    return float(1.0 - (returns.float() - values.float()).var() / var)


def prioritized_sample(
    advantages: torch.Tensor, count: int, alpha: float, beta: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `count` distinct segments with probability proportional to (sum_t |A|)^alpha.

    Returns (indices, importance weights (N * P(i))^-beta) for ``advantages [segments, T]``.
    """
    num = advantages.shape[0]
    priority = advantages.abs().sum(dim=1).pow(alpha)
    priority = torch.nan_to_num(priority, nan=0.0, posinf=0.0)
    total = priority.sum()
    # All-zero priorities (e.g. no reward anywhere yet) fall back to uniform.
    probs = priority / total if total > 0 else torch.full_like(priority, 1.0 / num)
    # Segments with zero priority stay reachable so that multinomial always has enough of them.
    probs = (probs + 1e-12) / (1.0 + num * 1e-12)
    idx = torch.multinomial(probs, count, replacement=False, generator=generator)
    weights = (num * probs[idx]).pow(-beta)
    return idx, weights


def _take(tensor: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return tensor if idx is None else tensor[idx]


class Learner:
    def __init__(
        self,
        policy: Policy,
        optimizers: Optimizers,
        buffer: RolloutBuffer,
        train_cfg,
        total_updates: int,
        autocast=None,
        forward_fn=None,
        grad_sync: Callable[[Sequence[torch.Tensor]], None] | None = None,
        all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`grad_sync(params)`, when given, runs after each minibatch's gradients are accumulated
        and before clipping: data-parallel training averages the ranks' gradients there.
        `all_sum(tensor)` sums over the ranks; with it the advantages are normalized with the
        mean and std of the whole minibatch (every rank's part of it)."""
        cfg = train_cfg
        self.grad_sync = grad_sync
        self.all_sum = all_sum
        self.policy, self.opt, self.buffer, self.cfg = policy, optimizers, buffer, cfg
        self.total_updates = max(total_updates, 1)
        self.autocast = autocast
        self.forward_fn = forward_fn or policy.forward_sequence
        horizon = buffer.horizon
        if cfg.minibatch_size % horizon:
            raise ValueError(
                f"train.minibatch_size ({cfg.minibatch_size}) must be a multiple of "
                f"train.bptt_horizon ({horizon})"
            )
        if cfg.max_minibatch_size < horizon:
            raise ValueError(
                f"train.max_minibatch_size ({cfg.max_minibatch_size}) must be at least "
                f"train.bptt_horizon ({horizon})"
            )
        self.segments_per_minibatch = cfg.minibatch_size // horizon
        if buffer.num_segments % self.segments_per_minibatch:
            raise ValueError(
                f"train.batch_size ({buffer.num_segments * horizon}) must be a multiple of "
                f"train.minibatch_size ({cfg.minibatch_size})"
            )
        self.num_minibatches = buffer.num_segments // self.segments_per_minibatch
        self.segments_per_chunk = max(1, cfg.max_minibatch_size // horizon)
        self.update = 0  # optimizer steps taken, the schedule's position
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self._arange = torch.arange(buffer.num_segments, device=buffer.obs.device)
        self.adaptive = cfg.advantage == "adaptive_horizon"
        if self.adaptive:
            if policy.horizon_lags < cfg.max_horizon:
                raise ValueError(
                    f"train.advantage = 'adaptive_horizon' needs a policy with a horizon head of "
                    f"{cfg.max_horizon} lags (make_policy(..., horizon_lags=train.max_horizon))"
                )
            # Lags beyond the rollout's steps per agent are never observed.
            self.lags = min(cfg.max_horizon, buffer.steps)
            self.horizon = max(1, min(cfg.min_horizon, self.lags))
            self.horizon_stats: HorizonStats | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()

    def progress(self) -> float:
        return min(self.update / self.total_updates, 1.0)

    def current_lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _advantages(self) -> torch.Tensor:
        cfg, buf = self.cfg, self.buffer
        if self.adaptive:
            return horizon_advantages(
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
        if cfg.vtrace:
            return vtrace_advantages(
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
        return gae(buf.values, buf.rewards, buf.dones, buf.next_value, cfg.gamma, cfg.gae_lambda)

    def trained_lags(self) -> int:
        """Lags in the critic's loss: the horizon plus the margin it may grow into."""
        return min(self.lags, self.horizon + self.cfg.horizon_margin)

    @torch.no_grad()
    def _predict_rewards(self, lags: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The horizon head's (means, stds) ``[agents, steps, lags]`` over the whole buffer."""
        buf, policy = self.buffer, self.policy
        seg = buf.segment_view
        obs, starts = seg(buf.obs), buf.segment_starts()
        state_h = buf.state_h.view(buf.num_segments, -1)
        state_c = buf.state_c.view(buf.num_segments, -1)
        means, stds = [], []
        for lo in range(0, buf.num_segments, self.segments_per_chunk):
            chunk = slice(lo, lo + self.segments_per_chunk)
            state = (state_h[chunk], state_c[chunk]) if policy.use_lstm else None
            with self._autocast():
                raw = self.forward_fn(obs[chunk], starts[chunk], state, with_horizon=lags)[2]
            mean, std = split_head(raw)
            means.append(mean)
            stds.append(std)
        shape = (buf.num_agents, buf.steps, lags)
        return torch.cat(means).view(shape), torch.cat(stds).view(shape)

    def _update_horizon(self) -> None:
        """Targets of this rollout, the critic's predictions, and from them the horizon.

        Everything is computed for the lags the critic was trained on (``seen``) only: the new
        horizon cannot pass them, so the advantage never needs more, and the cost does not grow
        with train.max_horizon. The loss targets reach one margin further (the new horizon's)."""
        cfg, buf = self.cfg, self.buffer
        seen = self.trained_lags()
        self.targets, self.valid = lag_targets(
            buf.rewards, buf.dones, buf.truncated, min(self.lags, seen + cfg.horizon_margin)
        )
        self.pred_mean, std = self._predict_rewards(seen)
        targets, valid = self.targets[..., :seen], self.valid[..., :seen]
        self.horizon_stats = choose_horizon(
            std, self.pred_mean, targets, valid, cfg.min_horizon, self.lags, seen
        )
        self.horizon = self.horizon_stats.horizon
        self.adv_targets, self.adv_valid = bootstrap_tail(targets, valid, buf.dones, self.pred_mean[:, -1])

    def learn(self) -> dict[str, float]:
        """Run all update epochs over the buffer; return mean loss statistics."""
        cfg, buf, policy = self.cfg, self.buffer, self.policy
        buf.ratio.fill_(1.0)
        if self.adaptive:
            self._update_horizon()
        advantages = self._advantages()
        if self.adaptive:
            # The scalar value head is not trained; its "returns" are only placeholders.
            returns = buf.values
            stats = {"explained_variance": self.horizon_stats.explained, "horizon": float(self.horizon)}
            trained = self.trained_lags()
            targets_seg = self.targets[..., :trained].reshape(buf.num_segments, buf.horizon, trained)
            valid_seg = self.valid[..., :trained].reshape(buf.num_segments, buf.horizon, trained)
        else:
            returns = advantages + buf.values
            stats = {"explained_variance": explained_variance(buf.values, returns)}

        seg = buf.segment_view
        obs, actions = seg(buf.obs), seg(buf.actions)
        old_log_probs, old_values = seg(buf.log_probs), seg(buf.values)
        returns_seg = seg(returns)
        starts = buf.segment_starts()
        state_h = buf.state_h.view(buf.num_segments, -1)
        state_c = buf.state_c.view(buf.num_segments, -1)
        ratio_seg = seg(buf.ratio)
        advantages_seg = seg(advantages)

        totals = torch.zeros(len(LOSS_KEYS), device=buf.obs.device)
        count = 0
        per = self.segments_per_minibatch
        for _ in range(cfg.update_epochs):
            order = None if cfg.prio_alpha > 0 else torch.randperm(buf.num_segments, device=buf.obs.device)
            for m in range(self.num_minibatches):
                if cfg.vtrace and count > 0:
                    # V-trace: targets and advantages follow the ratios of the latest updates.
                    advantages = self._advantages()
                    advantages_seg = seg(advantages)
                    if not self.adaptive:
                        returns_seg = seg(advantages + buf.values)
                weights = None
                if cfg.prio_alpha > 0:
                    beta = cfg.prio_beta0 + (1.0 - cfg.prio_beta0) * self.progress()
                    idx, weights = prioritized_sample(advantages_seg, per, cfg.prio_alpha, beta)
                elif self.num_minibatches == 1:
                    # The whole buffer in one minibatch: its order does not matter, skip the gathers.
                    idx = None
                else:
                    idx = order[m * per : (m + 1) * per]
                adv = _take(advantages_seg, idx)
                if weights is not None:
                    adv = adv * weights.unsqueeze(1)
                if cfg.norm_adv:
                    adv = normalize_advantages(adv, all_sum=self.all_sum)
                self.opt.set_lr_factor(
                    lr_factor(self.progress(), cfg.lr_schedule, cfg.warmup_fraction, cfg.min_lr_ratio)
                )
                self.opt.zero_grad()
                for lo in range(0, per, self.segments_per_chunk):
                    if idx is None and self.segments_per_chunk >= per:
                        chunk, share = None, 1.0
                    else:
                        chunk = (idx if idx is not None else self._arange)[lo : lo + self.segments_per_chunk]
                        share = len(chunk) / per
                    state = (_take(state_h, chunk), _take(state_c, chunk)) if policy.use_lstm else None
                    with self._autocast():
                        outputs = self.forward_fn(
                            _take(obs, chunk),
                            _take(starts, chunk),
                            state,
                            with_horizon=trained if self.adaptive else 0,
                        )
                    logits, values = outputs[0], outputs[1]
                    new_log_prob, entropy = evaluate_actions(policy, logits, _take(actions, chunk))
                    terms = ppo_loss(
                        new_log_prob,
                        _take(old_log_probs, chunk),
                        adv[lo : lo + self.segments_per_chunk],
                        values.float(),
                        _take(old_values, chunk),
                        _take(returns_seg, chunk),
                        entropy,
                        cfg.clip_coef,
                        cfg.vf_clip_coef,
                        0.0 if self.adaptive else cfg.vf_coef,
                        cfg.ent_coef,
                    )
                    if self.adaptive:
                        # The critic is the horizon head: its loss is the likelihood of the rewards
                        # at the lags it is trained on.
                        mean, std = split_head(outputs[2])
                        terms.value_loss = gaussian_nll(
                            mean,
                            std,
                            _take(targets_seg, chunk),
                            _take(valid_seg, chunk),
                        )
                        terms.loss = terms.loss + cfg.vf_coef * terms.value_loss
                    (terms.loss * share if share != 1.0 else terms.loss).backward()
                    with torch.no_grad():
                        totals += (
                            share
                            * torch.stack(
                                [
                                    terms.policy_loss,
                                    terms.value_loss,
                                    terms.entropy,
                                    terms.approx_kl,
                                    terms.clip_fraction,
                                ]
                            ).detach()
                        )
                        if cfg.vtrace:
                            if chunk is None:
                                ratio_seg.copy_(terms.ratio.detach())
                            else:
                                ratio_seg[chunk] = terms.ratio.detach()
                if self.grad_sync is not None:
                    self.grad_sync(self.params)
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
                self.opt.step()
                self.update += 1
                count += 1
        means = (totals / max(count, 1)).tolist()
        stats.update(zip(LOSS_KEYS, means, strict=True))
        if not all(math.isfinite(v) for v in means):
            raise FloatingPointError(
                f"training diverged: non-finite loss statistics {dict(zip(LOSS_KEYS, means, strict=True))}; "
                "try a lower train.learning_rate or train.max_grad_norm"
            )
        return stats
