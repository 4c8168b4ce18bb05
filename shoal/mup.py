"""The maximal-update parametrization (muP, Tensor Programs V) for Shoal's policy.

Under the standard parametrization the best learning rate moves when ``policy.hidden_size``
changes: Adam's update of a hidden matrix adds up ``width`` correlated coordinates, so the same
learning rate moves activations further in a wider network. muP rescales the initialization and
the per-layer learning rates so that every layer's activations, and their change per step, stay
the same size as the width grows. A learning rate tuned at ``policy.base_width`` then stays
(close to) optimal at other widths.

All rules are relative to ``base_width`` (``n_b``) at width ``n = policy.hidden_size``; at
``n == n_b`` every factor is exactly 1, so a muP policy and its optimizer equal the standard ones.

    parameter                           role    init at width n                  Adam LR x  Muon LR x
    ----------------------------------  ------  -------------------------------  ---------  -----------
    encoder.input.weight                input   entry size as at n_b (constant)  1          (AdamW half)
    encoder.hidden[i].weight            hidden  variance x n_b/n                 n_b/n      1 (see below)
    lstm.weight_ih_l0 (each gate)       hidden  variance x n_b/n                 n_b/n      1 (see below)
    lstm.weight_hh_l0 (each gate)       hidden  variance x n_b/n                 n_b/n      1 (see below)
    actor.weight, critic.weight         output  std x n_b/n                      n_b/n      (AdamW half)
    biases, log_std                     vector  unchanged (zeros)                1          (AdamW half)

How the init rules meet :meth:`shoal.policy.Policy._init_weights` (orthogonal init, entries of
size ``gain / sqrt(max(fan_out, fan_in))``):

- input: orthogonal init of the ``[n, obs]`` input layer shrinks its entries as ``1/sqrt(n)``
  once ``n > obs``, so its outputs would shrink with width. muP wants them width-independent,
  so the layer is rescaled by ``sqrt(max(n, obs) / max(n_b, obs))``: "keeps its init" in the
  sense of muP (the base-width entry size), not the literal orthogonal matrix.
- hidden: orthogonal (fan-in scaled) init already has variance ``x n_b/n``; the factor is 1
  at every width. The LSTM's stacked ``[4n, n]`` matrices are handled gate by gate, each gate's
  ``[n, n]`` block being one hidden matrix (all four get the same factor).
- output: the heads are rescaled by ``sqrt(n_b / n)`` on top of orthogonal's ``1/sqrt(n)``.

Output heads: a 1/width scale, not zero init. Zero-initializing the heads is also muP, but it
would break the exact equality with the standard parametrization at ``n == n_b`` (the critic's
standard init is orthogonal with gain 1). A forward multiplier ``n_b/n`` on the heads would
need a change to the policy's forward pass, so checkpoints, ``shoal eval`` and ``torch.compile``
would all have to know about it. Instead the multiplier is folded into the weights: by the
abc-symmetry of Tensor Programs V (multiplier ``n^-a``, init ``n^-b``, Adam LR ``n^-c`` give the
same training for equal ``a + b`` and ``a + c``) "init std x n_b/n and Adam LR x n_b/n" trains
exactly like "multiplier n_b/n with init std and LR unchanged", and the network stays a plain
``nn.Linear``.

Muon: muP's spectral condition asks for a hidden matrix's update to have spectral norm
proportional to ``sqrt(max(1, fan_out / fan_in))``, and Muon's orthogonalized update ``O`` has
spectral norm ~1. Torch's Muon multiplies ``O`` for an ``[A, B]`` matrix by
``sqrt(max(1, A / B))`` (``adjust_lr_fn=None``/"original", torch's default) or by
``0.2 * sqrt(max(A, B))`` ("match_rms_adamw", Adam's entry size). The first is already the
spectral rule, and for every hidden matrix here (square encoder layers, ``[n, n]`` LSTM gate
blocks, ``[4n, n]`` stacks) it does not change with width: multiplier 1. The second grows like
``sqrt(n)``: multiplier ``sqrt(n_b / n)``. :func:`regroup` reads ``adjust_lr_fn`` from the Muon
optimizer it is given (:func:`muon_lr_scale` has the general formula). Muon orthogonalizes a
stacked LSTM matrix as a whole, not gate by gate; its 4:1 shape does not change with width, so
the width scaling is the same. The AdamW half of a Muon setup (input layer, heads, vectors)
follows the Adam column.

Learning-rate groups: :func:`regroup` splits each optimizer param group by learning-rate
multiplier. Every group carries ``lr_scale``; its ``base_lr`` is the unscaled base learning rate
and the schedule (``shoal.train.optim.Optimizers.set_lr_factor``) sets
``lr = base_lr * schedule_factor * lr_scale``. Both keys are part of the optimizer state, so
checkpoints and ``--resume`` keep them.

``shoal mup-check ENV`` (:func:`mup_check_main`) runs the coordinate check: the mean absolute
activation of every layer over the first few optimizer steps, across widths.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.core.fileio import write_atomic

PARAMETRIZATIONS = ("standard", "mup")
DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048)
LSTM_GATES = 4


@dataclass(frozen=True)
class ParamRule:
    """How one parameter scales with width under muP (all factors are 1 at base width)."""

    name: str
    role: str  # "input", "hidden", "output" or "vector"
    init_scale: float  # multiplies the standard init
    adam_lr_scale: float
    # Hidden matrices: the shape of the whole (stacked) matrix and of one gate block, at this
    # width and at base width; Muon's multiplier depends on them (see muon_lr_scale).
    shapes: tuple[tuple[int, int], ...] = ()


# ---- the rules ----


def _check_width(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _orthogonal_rms(shape: tuple[float, float]) -> float:
    # Entry RMS of an orthogonal init of a [rows, cols] matrix (gain 1): orthonormal columns
    # when rows >= cols, orthonormal rows otherwise.
    return 1.0 / math.sqrt(max(shape))


def _snap(x: float) -> float:
    # Factors that are 1 up to rounding are exactly 1, so they leave the init untouched.
    return 1.0 if abs(x - 1.0) < 1e-12 else x


def _aspect(shape: tuple[float, float]) -> float:
    fan_out, fan_in = shape
    return max(1.0, fan_out / fan_in)


def param_rules(policy: nn.Module, base_width: int) -> dict[str, ParamRule]:
    """The muP factors of every parameter of `policy` (a shoal.policy.Policy) at its width."""
    base = _check_width(base_width, "policy.base_width")
    width = _check_width(policy.hidden_size, "policy.hidden_size")
    ratio = base / width
    rules: dict[str, ParamRule] = {}
    for role, named in policy.parameter_groups().items():
        for name, param in named:
            if param.ndim < 2:
                rules[name] = ParamRule(name, "vector", 1.0, 1.0)
                continue
            rows, cols = param.shape[0], param.shape[1]
            if role == "input":
                _expect(name, rows == width, f"{width} rows", tuple(param.shape))
                at_base = (base, cols)
                init = math.sqrt(max(rows, cols) / max(at_base)) if at_base != (rows, cols) else 1.0
                rules[name] = ParamRule(name, "input", init, 1.0)
            elif role == "output":
                _expect(name, cols == width, f"{width} columns", tuple(param.shape))
                at_base = (rows, base)
                init = math.sqrt(max(rows, cols) / max(at_base)) * ratio if at_base != (rows, cols) else 1.0
                rules[name] = ParamRule(name, "output", init, ratio)
            elif role == "hidden":
                gates = LSTM_GATES if name.startswith("lstm.") else 1
                _expect(name, rows == gates * width and cols == width, f"shape [{gates * width}, {width}]",
                        tuple(param.shape))
                # Orthogonal init covers the whole stacked matrix; each gate block is one
                # [width, width] hidden matrix.
                whole, whole_base = (rows, cols), (gates * base, base)
                init = _orthogonal_rms(whole_base) * math.sqrt(ratio) / _orthogonal_rms(whole)
                shapes = (whole, whole_base, (width, width), (base, base))
                rules[name] = ParamRule(name, "hidden", _snap(init), ratio, shapes)
            else:
                raise ValueError(
                    f"muP has no rule for the {param.ndim}-D parameter '{name}' in role '{role}' "
                    "(expected input, hidden or output matrices)"
                )
    return rules


def _expect(name: str, ok: bool, expected: str, shape: tuple[int, ...]) -> None:
    if not ok:
        raise ValueError(f"muP expected '{name}' to have {expected}, got shape {list(shape)}")


def apply_mup(policy: nn.Module, base_width: int) -> nn.Module:
    """Rescale a freshly initialized policy's weights to muP (in place) and mark it as muP.

    Consumes no random numbers, so the same seed gives the same draws as the standard policy,
    only rescaled; at ``hidden_size == base_width`` nothing changes.
    """
    if getattr(policy, "mup_base_width", None) is not None:
        raise ValueError("apply_mup was already applied to this policy (it rescales the init; apply it once)")
    rules = param_rules(policy, base_width)
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name, rule in rules.items():
            if rule.init_scale == 1.0:
                continue
            if rule.role == "hidden" and name.startswith("lstm."):
                for block in params[name].chunk(LSTM_GATES, dim=0):
                    block.mul_(rule.init_scale)
            else:
                params[name].mul_(rule.init_scale)
    policy.mup_base_width = int(base_width)
    return policy


MUON_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def muon_lr_scale(rule: ParamRule, adjust_lr_fn: str | None = None) -> float:
    """Muon's muP multiplier for a hidden matrix, given torch Muon's ``adjust_lr_fn``.

    muP's spectral rule wants each gate block's update to have spectral norm proportional to
    ``sqrt(max(1, fan_out / fan_in))``. Torch's Muon multiplies its orthogonalized update of
    the whole ``[A, B]`` matrix by ``sqrt(max(1, A / B))`` ("original", the default) or by
    ``0.2 * sqrt(max(A, B))`` ("match_rms_adamw"); the multiplier is the rule's growth over
    torch's, 1 at base width.
    """
    if rule.role != "hidden":
        raise ValueError(f"Muon only owns hidden matrices; '{rule.name}' is {rule.role}")
    whole, whole_base, gate, gate_base = rule.shapes
    wanted = math.sqrt(_aspect(gate) / _aspect(gate_base))
    if adjust_lr_fn in (None, "original"):
        given = math.sqrt(_aspect(whole) / _aspect(whole_base))
    elif adjust_lr_fn == "match_rms_adamw":
        given = math.sqrt(max(whole) / max(whole_base))
    else:
        raise ValueError(
            "muP knows torch Muon's adjust_lr_fn None, 'original' and 'match_rms_adamw', "
            f"got {adjust_lr_fn!r}"
        )
    return _snap(wanted / given)


def lr_scales(policy: nn.Module, muon: bool = False, adjust_lr_fn: str | None = None) -> dict[int, float]:
    """Learning-rate multiplier of every parameter (by id); all 1 for a standard policy.

    ``muon``: the multipliers for the hidden matrices when torch Muon (with ``adjust_lr_fn``)
    owns them; the other parameters get the Adam rules either way.
    """
    base_width = getattr(policy, "mup_base_width", None)
    if base_width is None:
        return {id(p): 1.0 for p in policy.parameters()}
    params = dict(policy.named_parameters())
    return {
        id(params[name]): (
            muon_lr_scale(rule, adjust_lr_fn) if muon and rule.role == "hidden" else rule.adam_lr_scale
        )
        for name, rule in param_rules(policy, base_width).items()
    }


def _split(params: list[nn.Parameter], scales: dict[int, float]) -> list[tuple[float, list[nn.Parameter]]]:
    # Groups in order of first appearance, so the first group holds the first parameter (the
    # input layer, multiplier 1) and the trainer's reported learning rate stays the base one.
    groups: dict[float, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return list(groups.items())


def optimizer_param_groups(
    policy: nn.Module, train_cfg: Any, muon_adjust_lr_fn: str | None = None
) -> list[dict[str, Any]]:
    """The param groups muP gives `policy` under ``train_cfg.optimizer``.

    Each dict has ``params``, ``names``, ``lr`` (the scaled learning rate), ``lr_scale`` and
    ``optimizer`` ("adam" for the Adam/AdamW optimizer, "muon" for Muon's hidden matrices,
    assumed built with ``adjust_lr_fn=muon_adjust_lr_fn``).
    """
    name = train_cfg.optimizer
    lr = float(train_cfg.learning_rate)
    names = {id(p): n for n, p in policy.named_parameters()}
    out: list[dict[str, Any]] = []
    if name in ("adam", "adamw"):
        parts = [("adam", [p for p in policy.parameters() if p.requires_grad], lr, False)]
    elif name == "muon":
        roles = policy.parameter_groups()
        hidden = [p for _, p in roles["hidden"]]
        rest = [p for key in ("input", "output", "other") for _, p in roles[key]]
        parts = [("muon", hidden, lr, True), ("adam", rest, lr * train_cfg.muon_adam_lr_ratio, False)]
    else:
        raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'muon', got {name!r}")
    for kind, params, base_lr, is_muon in parts:
        for scale, group in _split(params, lr_scales(policy, is_muon, muon_adjust_lr_fn)):
            out.append({"params": group, "names": [names[id(p)] for p in group], "lr": base_lr * scale,
                        "lr_scale": scale, "optimizer": kind})
    return [g for g in out if g["params"]]


def regroup(optimizers: Any, policy: nn.Module) -> Any:
    """Give each param group of `optimizers` (shoal.train.optim.Optimizers) its muP multiplier.

    Splits a group whose parameters need different multipliers; every resulting group keeps the
    original group's settings, has ``base_lr`` = the unscaled base learning rate, ``lr_scale``
    and ``lr = base_lr * lr_scale``. A standard policy's groups only gain ``lr_scale = 1``. Call
    it before the first step (optimizer state is per parameter, so nothing is lost either way).
    """
    for opt in optimizers.optimizers:
        if all("lr_scale" in g for g in opt.param_groups):
            continue  # already regrouped
        is_muon = isinstance(opt, torch.optim.Muon)
        old_groups = list(opt.param_groups)
        new_groups = []
        for group in old_groups:
            scales = lr_scales(policy, is_muon, group.get("adjust_lr_fn"))
            base_lr = group.get("base_lr", group["lr"])
            settings = {k: v for k, v in group.items() if k != "params"}
            for scale, params in _split(group["params"], scales):
                new_groups.append(
                    {**settings, "params": params, "base_lr": base_lr, "lr_scale": scale,
                     "lr": base_lr * scale}
                )
        opt.param_groups.clear()
        for group in new_groups:
            opt.add_param_group(group)
    return optimizers


# ---- the coordinate check ----

LAYER_ORDER = ("encoder.input", "encoder.hidden", "lstm.h", "logits", "value")


@dataclass
class CoordCheck:
    """Mean |activation| per parametrization, layer, optimizer step and width."""

    widths: list[int]
    steps: int
    base_width: int
    learning_rate: float
    # sizes[parametrization][layer] = array [steps + 1, len(widths)]; row t is after t updates.
    sizes: dict[str, dict[str, np.ndarray]]

    def ratio(self, parametrization: str, layer: str, step: int = -1) -> float:
        """Activation size at the widest width over the narrowest, at `step`."""
        row = self.sizes[parametrization][layer][step]
        return float(row[-1] / row[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": self.widths, "steps": self.steps, "base_width": self.base_width,
            "learning_rate": self.learning_rate,
            "sizes": {p: {k: v.tolist() for k, v in layers.items()} for p, layers in self.sizes.items()},
        }


@dataclass
class _Batch:
    obs: torch.Tensor  # [B, T, obs]
    starts: torch.Tensor  # [B, T]
    actions: torch.Tensor  # [B, T, dims]
    rewards: torch.Tensor  # [B, T]
    dones: torch.Tensor  # [B, T]


def sample_batch(env_name: str, num_envs: int, horizon: int, seed: int, options: dict[str, Any]) -> _Batch:
    """Observations from `horizon` steps of uniformly random actions in `num_envs` envs."""
    import shoal

    env = shoal.make(env_name, num_envs=num_envs, seed=seed, num_threads=1, **options)
    try:
        rng = np.random.default_rng(seed)
        space = env.single_action_space
        n = env.num_agents
        obs, _ = env.reset(seed=seed)
        obs_seq, act_seq, rew_seq, done_seq, start_seq = [], [], [], [], []
        start = np.ones(n, dtype=bool)
        for _ in range(horizon):
            if hasattr(space, "nvec"):
                nvec = np.asarray(space.nvec).reshape(-1)
                actions = rng.integers(0, nvec, size=(n, len(nvec)))
                stored = actions
            elif hasattr(space, "n"):
                actions = rng.integers(0, int(space.n), size=n)
                stored = actions[:, None]
            else:
                low, high = np.asarray(space.low).reshape(-1), np.asarray(space.high).reshape(-1)
                actions = rng.uniform(np.maximum(low, -1.0), np.minimum(high, 1.0), size=(n, low.size))
                actions = actions.astype(np.float32)
                stored = actions
            obs_seq.append(np.array(obs, copy=True))
            start_seq.append(start.copy())
            act_seq.append(stored)
            obs, rewards, terminals, truncations, _ = env.step(actions)
            done = np.logical_or(terminals, truncations)
            rew_seq.append(np.array(rewards, dtype=np.float32))
            done_seq.append(done)
            start = done
    finally:
        env.close()
    return _Batch(_stack(obs_seq), _stack(start_seq).float(), _stack(act_seq), _stack(rew_seq),
                  _stack(done_seq).float())


def _stack(steps: list[np.ndarray]) -> torch.Tensor:
    # Per-step [B, ...] arrays -> [B, T, ...].
    return torch.as_tensor(np.stack(steps, axis=1))


def _discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running * (1.0 - dones[:, t])
        returns[:, t] = running
    return returns


class _Recorder:
    """Forward hooks that record the mean |output| of each named layer of a policy."""

    def __init__(self, policy: nn.Module) -> None:
        self.sizes: dict[str, float] = {}
        self.handles = [policy.encoder.input.register_forward_hook(self._out("encoder.input"))]
        for i, layer in enumerate(policy.encoder.hidden):
            self.handles.append(layer.register_forward_hook(self._out(f"encoder.hidden.{i}")))
        if policy.use_lstm:
            # The actor's input is the LSTM output h.
            self.handles.append(policy.actor.register_forward_pre_hook(self._in("lstm.h")))
        self.handles.append(policy.actor.register_forward_hook(self._out("logits")))
        self.handles.append(policy.critic.register_forward_hook(self._out("value")))

    def _out(self, key: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.sizes[key] = float(output.detach().abs().mean())
        return hook

    def _in(self, key: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            self.sizes[key] = float(inputs[0].detach().abs().mean())
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _trace(cfg: Any, batch: _Batch, obs_space: Any, act_space: Any, steps: int) -> list[dict[str, float]]:
    """Activation sizes before each of `steps` PPO updates and after the last."""
    from shoal.core.hardware import resolve_device
    from shoal.policy import evaluate_actions, make_policy
    from shoal.train.losses import normalize_advantages, ppo_loss
    from shoal.train.optim import make_optimizer

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    policy = make_policy(obs_space, act_space, cfg.policy).to(device)
    batch = _Batch(*(getattr(batch, f).to(device) for f in ("obs", "starts", "actions", "rewards", "dones")))
    optimizers = regroup(make_optimizer(policy, cfg.train), policy)
    t = cfg.train
    with torch.no_grad():
        logits, old_values = policy.forward_sequence(batch.obs, batch.starts)
        old_log_prob, _ = evaluate_actions(policy, logits, batch.actions)
    returns = _discounted_returns(batch.rewards, batch.dones, t.gamma)
    advantages = normalize_advantages(returns - old_values)
    recorder = _Recorder(policy)
    trace = []
    try:
        for step in range(steps + 1):
            logits, values = policy.forward_sequence(batch.obs, batch.starts)
            trace.append(dict(recorder.sizes))
            if step == steps:
                break
            log_prob, entropy = evaluate_actions(policy, logits, batch.actions)
            terms = ppo_loss(log_prob, old_log_prob, advantages, values, old_values, returns, entropy,
                             t.clip_coef, t.vf_clip_coef, t.vf_coef, t.ent_coef)
            optimizers.zero_grad()
            terms.loss.backward()
            if t.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(list(policy.parameters()), t.max_grad_norm)
            optimizers.step()
    finally:
        recorder.close()
    return trace


def coord_check(
    env_name: str,
    widths: list[int] | tuple[int, ...] = DEFAULT_WIDTHS,
    parametrizations: tuple[str, ...] = PARAMETRIZATIONS,
    steps: int = 5,
    learning_rate: float | None = None,
    overrides: list[str] | None = None,
    num_envs: int = 16,
    horizon: int = 16,
    seed: int | None = None,
) -> CoordCheck:
    """Mean |activation| of every layer over the first `steps` PPO/optimizer updates, per width.

    The policy and optimizer come from the env's config (with `overrides`, e.g.
    ``["--policy.base-width", "64"]``); all widths train on the same batch of observations
    from random play. `learning_rate` overrides ``train.learning_rate``.
    """
    from shoal.core.config import load_config

    widths = sorted(_check_width(w, "width") for w in widths)
    if len(widths) < 2:
        raise ValueError(f"the coordinate check needs at least two widths, got {widths}")
    for p in parametrizations:
        if p not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {p!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    cfg = load_config(env_name, overrides or [])
    if learning_rate is not None:
        cfg.train.learning_rate = float(learning_rate)
    if seed is not None:
        cfg.train.seed = seed
    batch = sample_batch(env_name, num_envs, horizon, cfg.train.seed, dict(cfg.env.options))

    import shoal

    probe = shoal.make(env_name, num_envs=1, seed=0, num_threads=1, **cfg.env.options)
    obs_space, act_space = probe.single_observation_space, probe.single_action_space
    probe.close()

    sizes: dict[str, dict[str, np.ndarray]] = {}
    for p in parametrizations:
        per_width = []
        for width in widths:
            run_cfg = cfg.copy()
            run_cfg.policy.hidden_size = width
            run_cfg.policy.parametrization = p
            per_width.append(_trace(run_cfg, batch, obs_space, act_space, steps))
        layers = [k for k in per_width[0][0]]
        sizes[p] = {
            layer: np.array([[per_width[w][s][layer] for w in range(len(widths))] for s in range(steps + 1)])
            for layer in layers
        }
    return CoordCheck(list(widths), steps, cfg.policy.base_width, cfg.train.learning_rate, sizes)


def plot_coord_check(result: CoordCheck, path: str | Path, title: str = "") -> Path:
    """One panel per layer (x: log2 width, y: mean |activation|), one line per step; one row
    per parametrization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result.sizes)
    layers = list(next(iter(result.sizes.values())))
    fig, axes = plt.subplots(len(params), len(layers), figsize=(3.2 * len(layers), 2.8 * len(params)),
                             squeeze=False, sharey="col")
    x = np.log2(result.widths)
    colors = plt.cm.viridis(np.linspace(0, 0.9, result.steps + 1))
    for i, p in enumerate(params):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            data = result.sizes[p][layer]
            for s in range(result.steps + 1):
                ax.plot(x, data[s], marker="o", ms=3, color=colors[s], label=f"step {s}")
            ax.set_yscale("log")
            ax.set_title(f"{p}: {layer}", fontsize=9)
            ax.set_xlabel("log2 width")
            if j == 0:
                ax.set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or f"coordinate check (lr {result.learning_rate:g}, base width {result.base_width})")
    fig.tight_layout()
    out = write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def print_coord_check(result: CoordCheck, console: Any = None) -> None:
    """A rich table per parametrization: layers x widths at step 0 and the last step."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            # Piped output: rich would squeeze the table into 80 columns and elide the numbers.
            console = Console(width=max(120, 30 + 9 * len(result.widths)))
    for p, layers in result.sizes.items():
        table = Table(title=f"{p}: mean |activation| (lr {result.learning_rate:g}, base width "
                            f"{result.base_width})", title_justify="left")
        table.add_column("layer", no_wrap=True)
        table.add_column("step", justify="right")
        for w in result.widths:
            table.add_column(str(w), justify="right")
        table.add_column(f"{result.widths[-1]}/{result.widths[0]}", justify="right")
        for layer, data in layers.items():
            for s in (0, result.steps):
                ratio = data[s][-1] / data[s][0]
                style = "red" if ratio > 2 or ratio < 0.5 else "green"
                table.add_row(layer if s == 0 else "", str(s), *(f"{v:.3g}" for v in data[s]),
                              f"[{style}]{ratio:.2f}[/]", end_section=s == result.steps)
        console.print(table)


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 64,128,256, got {text!r}"
        ) from None
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return widths


def mup_check_main(argv: list[str]) -> int:
    """`shoal mup-check ENV [--widths ...] [--parametrization standard|mup|both] [--section.key V ...]`."""
    from rich.console import Console

    from shoal.core.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="shoal mup-check",
        description="muP coordinate check: mean |activation| of each layer over the first optimizer steps, "
        "across widths. Under muP the curves stay flat in width; under the standard parametrization "
        "they drift.",
        epilog="Any --section.key VALUE flag sets the config "
        "(e.g. --policy.base-width 64 --policy.num-layers 2).",
        allow_abbrev=False,
    )
    parser.add_argument("env", metavar="ENV", help="env name (observations come from random play in it)")
    parser.add_argument("--widths", type=_widths, default=list(DEFAULT_WIDTHS),
                        help="comma-separated widths (default 64,128,256,512,1024,2048)")
    parser.add_argument("--parametrization", choices=("standard", "mup", "both"), default="both")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (default 5)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    parser.add_argument("--num-envs", type=int, default=16, help="envs of random play (default 16)")
    parser.add_argument("--horizon", type=int, default=16, help="steps of random play per env (default 16)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: train.seed)")
    parser.add_argument("-o", "--output", default="mup_check.png", metavar="FILE.png",
                        help="where to write the plot (default mup_check.png)")
    parser.add_argument("--json", default=None, metavar="FILE.json", help="also write the numbers as JSON")
    from shoal.core.config import split_config_flags

    regular, overrides = split_config_flags(list(argv))
    args = parser.parse_args(regular)
    for name in ("steps", "num_envs", "horizon"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    params = PARAMETRIZATIONS if args.parametrization == "both" else (args.parametrization,)
    try:
        result = coord_check(args.env, args.widths, params, args.steps, args.lr, overrides, args.num_envs,
                             args.horizon, args.seed)
    except (ConfigError, ValueError, TypeError) as e:
        print(f"shoal mup-check: error: {e}", file=sys.stderr)
        return 2
    print_coord_check(result)
    console = Console()
    out = plot_coord_check(result, args.output, f"{args.env}: coordinate check")
    console.print(f"wrote {out}")
    if args.json:
        text = json.dumps(result.to_dict(), indent=1) + "\n"
        jpath = write_atomic(Path(args.json), lambda tmp: Path(tmp).write_text(text))
        console.print(f"wrote {jpath}")
    return 0
