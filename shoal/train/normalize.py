"""Return-based reward scaling (train.reward_scale).

Each reward is divided by the running standard deviation of the discounted return
``R_t = gamma * R_{t-1} + r_t`` (reset where an episode ends), then clipped to +-REWARD_CLIP. Why
the return and not the reward: the critic regresses returns, so it is their spread that should
be O(1), whatever the env's reward units and however long its episodes. The mean is not
subtracted: shifting rewards would change which policy is best in episodes of varying length.

The observation side lives in the policy (``policy.obs_norm``), whose buffers travel with the
weights into ``model.pt``; this scaler only shapes training, so its statistics are saved in
``checkpoint.pt`` (for resume) and nothing in ``shoal eval`` reads or updates them.
"""

from __future__ import annotations

from typing import Any

import torch

REWARD_CLIP = 10.0
EPS = 1e-8


class RunningMeanVar:
    """Mean and (population) variance of every value merged so far, by Chan et al.'s parallel
    update, so a batch of n values weighs n whatever the order of the batches."""

    def __init__(self) -> None:
        # A prior of weight 1e-4 at mean 0, variance 1: the first batch (one agent's single
        # return has variance 0) cannot divide the rewards by zero.
        self.mean = 0.0
        self.var = 1.0
        self.count = 1e-4

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        batch_var, batch_mean = torch.var_mean(values.double(), correction=0)
        self.merge(n, float(batch_mean), float(batch_var))

    def merge(self, n: float, batch_mean: float, batch_var: float) -> None:
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta * delta * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class RewardScaler:
    """Scales a step's rewards in place for `num_agents` agents (see the module docstring)."""

    def __init__(self, num_agents: int, gamma: float, device: torch.device | str = "cpu") -> None:
        self.gamma = gamma
        self.returns = torch.zeros(num_agents, dtype=torch.float64, device=device)
        self.stats = RunningMeanVar()

    def scale_(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Fold this step's rewards into the running returns, then scale and clip `rewards`
        (one step of every agent) in place; agents with `dones` start a new return."""
        self.returns.mul_(self.gamma).add_(rewards.double())
        self.stats.update(self.returns)
        rewards.div_(self.std()).clamp_(-REWARD_CLIP, REWARD_CLIP)
        self.returns.mul_(1.0 - dones.double())
        return rewards

    def std(self) -> float:
        return (self.stats.var + EPS) ** 0.5

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats.state_dict(), "returns": self.returns.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        returns = state.get("returns")
        if returns is not None and returns.shape == self.returns.shape:
            self.returns.copy_(returns)
