"""The PPO update over one epoch's buffer.

Read :meth:`Learner.learn` top to bottom: the advantage estimator (shoal.train.advantage) reads
the rollout; then for each update epoch and each minibatch the segments are chosen (a random
permutation, or prioritized by advantage), their advantages normalized and weighted, the loss
computed chunk by chunk with gradients accumulated, and one optimizer step taken (gradient sync
across processes, clipping, learning-rate schedule). The loss statistics are averaged over the
minibatches.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shoal.policy import Policy, evaluate_actions
from shoal.train.advantage import AdvantageEstimator
from shoal.train.losses import LossTerms, normalize_advantages, ppo_loss
from shoal.train.optim import Optimizers, kl_adapted, lr_factor
from shoal.train.rollout import RolloutBuffer

LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


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


@dataclass
class Segments:
    """The buffer as ``[segments, T, ...]`` views, with this update's advantages and returns."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    starts: torch.Tensor
    state_h: torch.Tensor  # [segments, state]: the recurrent state before each segment
    state_c: torch.Tensor
    ratio: torch.Tensor  # a view of buffer.ratio: written as minibatches train
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None


class Learner:
    """PPO updates of `policy` from `buffer`, with advantages from `estimator`.

    The batch geometry (minibatch and chunk sizes against the buffer's segments) is checked
    once, by the training loop's config validation."""

    def __init__(
        self,
        policy: Policy,
        optimizers: Optimizers,
        buffer: RolloutBuffer,
        train_cfg: Any,
        estimator: AdvantageEstimator,
        total_updates: int,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        forward_fn: Callable[..., tuple[torch.Tensor, ...]] | None = None,
        grad_sync: Callable[[Sequence[torch.Tensor]], None] | None = None,
        all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`grad_sync(params)`, when given, runs after each minibatch's gradients are accumulated
        and before clipping: data-parallel training averages the ranks' gradients there.
        `all_sum(tensor)` sums over the ranks; with it the advantages are normalized with the
        mean and std of the whole minibatch (every rank's part of it)."""
        if estimator.aux_head is not None and getattr(policy, "aux_head", None) is not estimator.aux_head:
            # Otherwise the head would be neither optimized nor saved with the policy.
            raise ValueError("the policy lacks the estimator's head: make_policy(..., estimator.aux_head)")
        self.policy, self.opt, self.buffer, self.cfg = policy, optimizers, buffer, train_cfg
        self.estimator = estimator
        self.total_updates = max(total_updates, 1)
        self.autocast = autocast
        self.forward_fn = forward_fn or policy.forward_sequence
        self.grad_sync = grad_sync
        self.all_sum = all_sum
        self.segments_per_minibatch = train_cfg.minibatch_size // buffer.horizon
        self.num_minibatches = buffer.num_segments // self.segments_per_minibatch
        self.segments_per_chunk = max(1, train_cfg.max_minibatch_size // buffer.horizon)
        self.update = 0  # optimizer steps taken, the schedule's position
        self.kl_factor = 1.0  # the KL controller's multiplier of the scheduled rate (train.target_kl)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self._arange = torch.arange(buffer.num_segments, device=buffer.obs.device)

    def progress(self) -> float:
        return min(self.update / self.total_updates, 1.0)

    def current_lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"update": self.update, "kl_factor": self.kl_factor, "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update = int(state["update"])
        self.kl_factor = float(state.get("kl_factor", 1.0))
        self.estimator.load_state_dict(state.get("estimator", {}))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()

    # ---- the update ----

    def learn(self) -> dict[str, float]:
        """Run all update epochs over the buffer; return the estimator's statistics and the
        mean loss statistics."""
        seg = self._segments()
        self._set_targets(seg, self.estimator.prepare(self.buffer, functools.partial(self._forward_all, seg)))
        totals = torch.zeros(len(LOSS_KEYS), device=self.buffer.obs.device)
        count = 0
        kl_index = LOSS_KEYS.index("approx_kl")
        for _ in range(self.cfg.update_epochs):
            order = self._epoch_order()
            kl_before = totals[kl_index].clone()
            for m in range(self.num_minibatches):
                if self.estimator.uses_ratios and count > 0:
                    # Off-policy correction: advantages follow the ratios of the latest updates.
                    self._set_targets(seg, self.estimator.refresh())
                idx, weights = self._choose_segments(seg, order, m)
                self._train_minibatch(seg, idx, weights, totals)
                count += 1
            if self.cfg.target_kl > 0:
                self._adapt_to_kl((totals[kl_index] - kl_before) / self.num_minibatches)
        return self._statistics(totals, count)

    def _adapt_to_kl(self, pass_kl: torch.Tensor) -> None:
        """Move the KL controller's factor after a pass whose mean approx KL was `pass_kl`; the
        ranks of a data-parallel job decide on their mean, so their rates stay equal."""
        if self.all_sum is not None:
            total, ranks = self.all_sum(torch.stack([pass_kl, torch.ones_like(pass_kl)])).tolist()
            kl = total / ranks
        else:
            kl = float(pass_kl)
        self.kl_factor = kl_adapted(self.kl_factor, kl, self.cfg.target_kl)

    def _segments(self) -> Segments:
        buf = self.buffer
        # Every step starts on-policy; a minibatch that trains on a step records its new ratio.
        buf.ratio.fill_(1.0)
        view = buf.segment_view
        return Segments(
            obs=view(buf.obs),
            actions=view(buf.actions),
            log_probs=view(buf.log_probs),
            values=view(buf.values),
            starts=buf.segment_starts(),
            state_h=buf.state_h.view(buf.num_segments, -1),
            state_c=buf.state_c.view(buf.num_segments, -1),
            ratio=view(buf.ratio),
        )

    def _set_targets(self, seg: Segments, targets: tuple[torch.Tensor, torch.Tensor]) -> None:
        advantages, returns = targets
        seg.advantages = self.buffer.segment_view(advantages)
        seg.returns = self.buffer.segment_view(returns)

    @torch.no_grad()
    def _forward_all(self, seg: Segments, head: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """`head(features)` for every chunk of segments of the buffer, in order, under autocast
        and without gradients (the estimator's predictions over the rollout)."""
        outputs = []
        for lo in range(0, self.buffer.num_segments, self.segments_per_chunk):
            chunk = slice(lo, lo + self.segments_per_chunk)
            state = (seg.state_h[chunk], seg.state_c[chunk]) if self.policy.use_lstm else None
            with self._autocast():
                features = self.forward_fn(seg.obs[chunk], seg.starts[chunk], state, features=True)[2]
                outputs.append(head(features))
        return outputs

    def _epoch_order(self) -> torch.Tensor | None:
        """A fresh permutation of the segments, or None when minibatches are sampled by priority."""
        if self.cfg.prio_alpha > 0:
            return None
        return torch.randperm(self.buffer.num_segments, device=self.buffer.obs.device)

    def _choose_segments(
        self, seg: Segments, order: torch.Tensor | None, m: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Minibatch `m`'s segment indices (None: all, in buffer order) and importance weights."""
        cfg, per = self.cfg, self.segments_per_minibatch
        if cfg.prio_alpha > 0:
            beta = cfg.prio_beta0 + (1.0 - cfg.prio_beta0) * self.progress()
            return prioritized_sample(seg.advantages, per, cfg.prio_alpha, beta)
        if self.num_minibatches == 1:
            # The whole buffer in one minibatch: its order does not matter, skip the gathers.
            return None, None
        return order[m * per : (m + 1) * per], None

    def _train_minibatch(
        self, seg: Segments, idx: torch.Tensor | None, weights: torch.Tensor | None, totals: torch.Tensor
    ) -> None:
        """One optimizer step on the segments `idx`, in chunks of at most train.max_minibatch_size
        steps whose gradients add up to the whole minibatch's; adds its statistics to `totals`."""
        cfg, per, size = self.cfg, self.segments_per_minibatch, self.segments_per_chunk
        adv = _take(seg.advantages, idx)
        if cfg.norm_adv:
            adv = normalize_advantages(adv, all_sum=self.all_sum)
        if weights is not None:
            # After normalization, which would otherwise re-centre and rescale the correction
            # for sampling segments by priority.
            adv = adv * weights.unsqueeze(1)
        scheduled = lr_factor(self.progress(), cfg.lr_schedule, cfg.warmup_fraction, cfg.min_lr_ratio)
        self.opt.set_lr_factor(self.kl_factor * scheduled)
        self.opt.zero_grad()
        for lo in range(0, per, size):
            if idx is None and size >= per:
                chunk, share = None, 1.0
            else:
                chunk = (idx if idx is not None else self._arange)[lo : lo + size]
                share = len(chunk) / per
            terms = self._chunk_loss(seg, chunk, adv[lo : lo + size])
            (terms.loss * share if share != 1.0 else terms.loss).backward()
            self._record(seg, chunk, share, terms, totals)
        if self.grad_sync is not None:
            self.grad_sync(self.params)
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
        self.opt.step()
        self.update += 1

    def _chunk_loss(self, seg: Segments, chunk: torch.Tensor | None, adv: torch.Tensor) -> LossTerms:
        cfg, estimator = self.cfg, self.estimator
        state = (_take(seg.state_h, chunk), _take(seg.state_c, chunk)) if self.policy.use_lstm else None
        obs, starts = _take(seg.obs, chunk), _take(seg.starts, chunk)
        aux = None
        with self._autocast():
            if estimator.aux_head is None:
                logits, values = self.forward_fn(obs, starts, state)
            else:
                logits, values, features = self.forward_fn(obs, starts, state, features=True)
                aux = estimator.aux_outputs(features)
        new_log_prob, entropy = evaluate_actions(self.policy, logits, _take(seg.actions, chunk))
        terms = ppo_loss(
            new_log_prob,
            _take(seg.log_probs, chunk),
            adv,
            values.float(),
            _take(seg.values, chunk),
            _take(seg.returns, chunk),
            entropy,
            cfg.clip_coef,
            cfg.vf_clip_coef,
            estimator.value_coef,
            cfg.ent_coef,
        )
        return estimator.critic_loss(terms, aux, chunk)

    @torch.no_grad()
    def _record(
        self, seg: Segments, chunk: torch.Tensor | None, share: float, terms: LossTerms, totals: torch.Tensor
    ) -> None:
        stacked = torch.stack(
            [terms.policy_loss, terms.value_loss, terms.entropy, terms.approx_kl, terms.clip_fraction]
        )
        totals += share * stacked.detach()
        if self.estimator.uses_ratios:
            if chunk is None:
                seg.ratio.copy_(terms.ratio.detach())
            else:
                seg.ratio[chunk] = terms.ratio.detach()

    def _statistics(self, totals: torch.Tensor, count: int) -> dict[str, float]:
        means = dict(zip(LOSS_KEYS, (totals / max(count, 1)).tolist(), strict=True))
        if not all(math.isfinite(v) for v in means.values()):
            raise FloatingPointError(
                f"training diverged: non-finite loss statistics {means}; "
                "try a lower train.learning_rate or train.max_grad_norm"
            )
        return {**self.estimator.stats(), **means}
