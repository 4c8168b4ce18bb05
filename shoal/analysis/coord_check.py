"""The muP coordinate check: does each layer's activation size stay put as the width grows?

For each width (and each parametrization) the policy and optimizer are built from the env's
config and take a few PPO updates on one fixed batch of observations from random play; forward
hooks record the mean |output| of every layer before each update and after the last. Under muP
(:mod:`shoal.mup`) the curves stay flat in width; under the standard parametrization the heads'
outputs grow with width once Adam has moved them. docs/mup.md shows a run and how to read it.

``shoal mup-check ENV`` is :func:`coord_check_main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.core.checks import check_positive_int
from shoal.core.config import Config, ConfigError, load_config, split_config_flags
from shoal.core.fileio import write_atomic, write_text_atomic
from shoal.core.hardware import resolve_device
from shoal.envs.registry import make
from shoal.mup import PARAMETRIZATIONS, regroup
from shoal.policy import evaluate_actions, make_policy
from shoal.train.losses import normalize_advantages, ppo_loss
from shoal.train.optim import make_optimizer

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048)


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
            "widths": self.widths,
            "steps": self.steps,
            "base_width": self.base_width,
            "learning_rate": self.learning_rate,
            "sizes": {p: {k: v.tolist() for k, v in layers.items()} for p, layers in self.sizes.items()},
        }


# ---- the data: one batch of random play, shared by every width ----


@dataclass
class _Batch:
    obs: torch.Tensor  # [B, T, obs]
    starts: torch.Tensor  # [B, T]
    actions: torch.Tensor  # [B, T, dims]
    rewards: torch.Tensor  # [B, T]
    dones: torch.Tensor  # [B, T]

    def to(self, device: torch.device) -> _Batch:
        return _Batch(
            self.obs.to(device),
            self.starts.to(device),
            self.actions.to(device),
            self.rewards.to(device),
            self.dones.to(device),
        )


def _random_actions(space: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform actions for `n` agents: (what the env takes, what the batch stores as [n, dims])."""
    if hasattr(space, "nvec"):
        nvec = np.asarray(space.nvec).reshape(-1)
        actions = rng.integers(0, nvec, size=(n, len(nvec)))
        return actions, actions
    if hasattr(space, "n"):
        actions = rng.integers(0, int(space.n), size=n)
        return actions, actions[:, None]
    low, high = np.asarray(space.low).reshape(-1), np.asarray(space.high).reshape(-1)
    actions = rng.uniform(np.maximum(low, -1.0), np.minimum(high, 1.0), size=(n, low.size)).astype(np.float32)
    return actions, actions


def sample_batch(env_name: str, num_envs: int, horizon: int, seed: int, options: dict[str, Any]) -> _Batch:
    """Observations from `horizon` steps of uniformly random actions in `num_envs` envs."""
    env = make(env_name, num_envs=num_envs, seed=seed, num_threads=1, **options)
    try:
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        obs_seq, act_seq, rew_seq, done_seq, start_seq = [], [], [], [], []
        start = np.ones(env.num_agents, dtype=bool)
        for _ in range(horizon):
            actions, stored = _random_actions(env.single_action_space, env.num_agents, rng)
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
    return _Batch(
        _stack(obs_seq), _stack(start_seq).float(), _stack(act_seq), _stack(rew_seq), _stack(done_seq).float()
    )


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


# ---- the measurement ----


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

    def _out(self, key: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.sizes[key] = float(output.detach().abs().mean())

        return hook

    def _in(self, key: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            self.sizes[key] = float(inputs[0].detach().abs().mean())

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _trace(cfg: Config, batch: _Batch, obs_space: Any, act_space: Any, steps: int) -> list[dict[str, float]]:
    """Activation sizes before each of `steps` PPO updates and after the last."""
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    policy = make_policy(obs_space, act_space, cfg.policy).to(device)
    batch = batch.to(device)
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
            terms = ppo_loss(
                log_prob,
                old_log_prob,
                advantages,
                values,
                old_values,
                returns,
                entropy,
                t.clip_coef,
                t.vf_clip_coef,
                t.vf_coef,
                t.ent_coef,
            )
            optimizers.zero_grad()
            terms.loss.backward()
            if t.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(list(policy.parameters()), t.max_grad_norm)
            optimizers.step()
    finally:
        recorder.close()
    return trace


def _check_arguments(
    widths: list[int] | tuple[int, ...], parametrizations: tuple[str, ...], steps: int
) -> list[int]:
    """The widths, sorted; ValueError (TypeError for a non-integer width) for a bad argument."""
    widths = sorted(check_positive_int("width", w) for w in widths)
    if len(widths) < 2:
        raise ValueError(f"the coordinate check needs at least two widths, got {widths}")
    for p in parametrizations:
        if p not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {p!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return widths


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
    widths = _check_arguments(widths, parametrizations, steps)
    cfg = load_config(env_name, overrides or [])
    if learning_rate is not None:
        cfg.train.learning_rate = float(learning_rate)
    if seed is not None:
        cfg.train.seed = seed
    batch = sample_batch(env_name, num_envs, horizon, cfg.train.seed, dict(cfg.env.options))
    probe = make(env_name, num_envs=1, seed=0, num_threads=1, **cfg.env.options)
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
        sizes[p] = {
            layer: np.array([[trace[s][layer] for trace in per_width] for s in range(steps + 1)])
            for layer in per_width[0][0]
        }
    return CoordCheck(list(widths), steps, cfg.policy.base_width, cfg.train.learning_rate, sizes)


# ---- the report: a plot and a table ----


def plot_coord_check(result: CoordCheck, path: str | Path, title: str = "") -> Path:
    """One panel per layer (x: log2 width, y: mean |activation|), one line per step; one row
    per parametrization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result.sizes)
    layers = list(next(iter(result.sizes.values())))
    fig, axes = plt.subplots(
        len(params), len(layers), figsize=(3.2 * len(layers), 2.8 * len(params)), squeeze=False, sharey="col"
    )
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
        table = Table(
            title=f"{p}: mean |activation| (lr {result.learning_rate:g}, base width {result.base_width})",
            title_justify="left",
        )
        table.add_column("layer", no_wrap=True)
        table.add_column("step", justify="right")
        for w in result.widths:
            table.add_column(str(w), justify="right")
        table.add_column(f"{result.widths[-1]}/{result.widths[0]}", justify="right")
        for layer, data in layers.items():
            for s in (0, result.steps):
                ratio = data[s][-1] / data[s][0]
                style = "red" if ratio > 2 or ratio < 0.5 else "green"
                table.add_row(
                    layer if s == 0 else "",
                    str(s),
                    *(f"{v:.3g}" for v in data[s]),
                    f"[{style}]{ratio:.2f}[/]",
                    end_section=s == result.steps,
                )
        console.print(table)


# ---- `shoal mup-check` ----


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


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--widths",
        type=_widths,
        default=list(DEFAULT_WIDTHS),
        help="comma-separated widths (default 64,128,256,512,1024,2048)",
    )
    parser.add_argument("--parametrization", choices=("standard", "mup", "both"), default="both")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (default 5)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    parser.add_argument("--num-envs", type=int, default=16, help="envs of random play (default 16)")
    parser.add_argument("--horizon", type=int, default=16, help="steps of random play per env (default 16)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: train.seed)")
    parser.add_argument(
        "-o",
        "--output",
        default="mup_check.png",
        metavar="FILE.png",
        help="where to write the plot (default mup_check.png)",
    )
    parser.add_argument("--json", default=None, metavar="FILE.json", help="also write the numbers as JSON")
    return parser


def coord_check_main(argv: list[str]) -> int:
    """`shoal mup-check ENV [--widths ...] [--parametrization standard|mup|both] [--section.key V ...]`.

    Returns 0, or 2 for a bad config or argument (argparse exits with 2 for bad flags).
    """
    from rich.console import Console

    parser = _parser()
    regular, overrides = split_config_flags(list(argv))
    args = parser.parse_args(regular)
    for name in ("steps", "num_envs", "horizon"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    params = PARAMETRIZATIONS if args.parametrization == "both" else (args.parametrization,)
    try:
        result = coord_check(
            args.env,
            args.widths,
            params,
            args.steps,
            args.lr,
            overrides,
            args.num_envs,
            args.horizon,
            args.seed,
        )
    except (ConfigError, ValueError, TypeError) as e:
        print(f"shoal mup-check: error: {e}", file=sys.stderr)
        return 2
    print_coord_check(result)
    console = Console()
    out = plot_coord_check(result, args.output, f"{args.env}: coordinate check")
    console.print(f"wrote {out}")
    if args.json:
        jpath = write_text_atomic(Path(args.json), json.dumps(result.to_dict(), indent=1) + "\n")
        console.print(f"wrote {jpath}")
    return 0
