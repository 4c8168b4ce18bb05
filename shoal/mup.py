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
    aux_head.* matrices (if any)        output  std x n_b/n                      n_b/n      (AdamW half)
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

The coordinate check that shows these rules at work (``shoal mup-check ENV``: the mean absolute
activation of every layer over the first few optimizer steps, across widths) lives in
:mod:`shoal.analysis.coord_check`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shoal.core.checks import check_positive_int

PARAMETRIZATIONS = ("standard", "mup")
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
    base = check_positive_int("policy.base_width", base_width)
    width = check_positive_int("policy.hidden_size", policy.hidden_size)
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
