"""The vector-env contract every env, adapter and backend follows (docs/architecture.md section 1).

A vector env holds `num_envs` copies of a game with `agents_per_env` agents each; every buffer
has one row per agent (`num_agents` rows). Episodes reset inside `step`: the returned
observation of a finished episode is already the next one's first, and a truncated episode's
last observation is kept in `final_observations` so the trainer can bootstrap from it.

This module needs neither the C extension nor any other part of Shoal, so the pure-Python
adapters (shoal.emulation) and the trainer can name the contract without compiling anything.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces


class Batch(NamedTuple):
    """What `recv()` returns; unpacks in this order."""

    observations: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    truncations: np.ndarray
    final_observations: np.ndarray
    infos: list[dict[str, Any]]
    agent_ids: np.ndarray
    masks: np.ndarray


StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]


@runtime_checkable
class VecEnv(Protocol):
    """The synchronous contract the trainer, `shoal eval` and the vector backends rely on.

    Arrays are the env's own buffers, rewritten in place by the next `step`; callers that keep
    them across steps copy them.
    """

    num_envs: int
    agents_per_env: int
    num_agents: int
    # A flat Box: one observation row per agent, float32 or uint8.
    single_observation_space: spaces.Box
    # Discrete, MultiDiscrete or Box.
    single_action_space: spaces.Space
    # [num_agents, obs_size]: the observations of the last reset or step.
    observations: np.ndarray
    # [num_agents, obs_size]: row i is valid where truncations[i] after the last step.
    final_observations: np.ndarray

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(observations, infos); with a seed every env's stream restarts from it."""
        ...

    def step(self, actions: Any) -> StepResult:
        """(observations, rewards float32, terminals bool, truncations bool, infos), each [num_agents]."""
        ...

    def log(self) -> dict[str, float | int]:
        """Means over episodes finished since the last call ("score", "episode_return",
        "episode_length"), with their count in "episodes"; {} when none finished."""
        ...

    def render(self) -> str:
        """A text picture of env 0."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncVecEnv(VecEnv, Protocol):
    """The same envs stepped in two halves: `send` starts a step of every env, `recv` waits for it.

    Right after `reset()`, `recv()` returns the reset observations. A multiprocessing backend
    steps its workers between the two calls, so the caller can work meanwhile.
    """

    def send(self, actions: Any) -> None: ...

    def recv(self) -> Batch: ...


__all__ = ["AsyncVecEnv", "Batch", "StepResult", "VecEnv"]
