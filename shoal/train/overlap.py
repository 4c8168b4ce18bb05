"""Double-buffered rollouts: two env halves and a thread that steps one while the policy acts
for the other (``train.overlap``; the Collector's overlap mode uses these).

`EnvHalves` is a native env split into two native envs of half the envs each. It keeps the
vector-env contract (docs/architecture.md §1) for everything the trainer does with an env:
rows ``[0, agents of half 0)`` are half 0's agents, the rest half 1's, so the buffer layout
(agent-major ``[agents, steps]``) is the same as with one env. Half 0 is seeded like the first
half of a single env with the same seed; half 1 gets a seed derived from it (`second_seed`),
so that its envs play other games than half 0's.

`EnvStepper` steps one env half on a background Python thread. The native step releases the
GIL while C runs, and so do torch's kernels, so the env half steps while the main thread runs
inference (and the buffer copies) for the other half.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

_MASK64 = (1 << 64) - 1


def second_seed(seed: int) -> int:
    """Seed of half 1 for env seed `seed`: a splitmix64 round, so that its (seed, env index)
    streams do not repeat half 0's."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def split_counts(num_envs: int) -> tuple[int, int]:
    if num_envs < 2:
        raise ValueError(f"train.overlap needs at least 2 envs (one per half), got env.num_envs = {num_envs}")
    first = (num_envs + 1) // 2
    return first, num_envs - first


class EnvHalves:
    """A native env as two native envs (halves) with the vector-env contract of one."""

    def __init__(
        self, name: str, num_envs: int, seed: int = 0, num_threads: int = 0, **options: Any
    ) -> None:
        from shoal.envs.native import NativeVecEnv
        from shoal.train.threads import available_cores

        counts = split_counts(num_envs)
        # Each half steps while the policy computes on the other: by default they share the
        # cores with torch instead of each taking all of them.
        threads = num_threads or max(1, available_cores() // 2)
        seeds = (int(seed), second_seed(seed))
        first = NativeVecEnv(name, num_envs=counts[0], seed=seeds[0], num_threads=threads, **options)
        try:
            second = NativeVecEnv(name, num_envs=counts[1], seed=seeds[1], num_threads=threads, **options)
        except BaseException:
            first.close()
            raise
        self.halves = (first, second)
        self.name = name
        self.num_envs = int(num_envs)
        self.agents_per_env = first.agents_per_env
        self.num_agents = first.num_agents + second.num_agents
        self.seed = int(seed)
        self.options = first.options
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.num_threads = first.num_threads
        # Rows of each half in the full arrays.
        self.rows = (slice(0, first.num_agents), slice(first.num_agents, self.num_agents))
        n = self.num_agents
        self.observations = np.zeros((n, *first.observations.shape[1:]), dtype=first.observations.dtype)
        self.final_observations = np.zeros_like(self.observations)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.terminals = np.zeros(n, dtype=np.bool_)
        self.truncations = np.zeros(n, dtype=np.bool_)
        self.agent_ids = np.arange(n, dtype=np.int64)
        self.masks = np.ones(n, dtype=np.bool_)
        self._pending: Any = None
        self.gather()

    def gather(self) -> np.ndarray:
        """Copy both halves' observations into `observations` (the full array) and return it."""
        for half, rows in zip(self.halves, self.rows, strict=True):
            self.observations[rows] = half.observations
        return self.observations

    # ---- the synchronous contract (both halves, one after the other) ----

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        seeds = (None, None) if seed is None else (int(seed), second_seed(seed))
        for half, half_seed in zip(self.halves, seeds, strict=True):
            half.reset(seed=half_seed)
        self.rewards.fill(0.0)
        self.terminals.fill(False)
        self.truncations.fill(False)
        self._pending = None
        return self.gather(), []

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        array = np.asarray(actions)
        if array.shape[:1] != (self.num_agents,):
            raise ValueError(
                f"actions must have {self.num_agents} rows (num_agents), got shape {array.shape}"
            )
        for half, rows in zip(self.halves, self.rows, strict=True):
            obs, rewards, terminals, truncations, _ = half.step(array[rows])
            self.observations[rows] = obs
            self.rewards[rows] = rewards
            self.terminals[rows] = terminals
            self.truncations[rows] = truncations
            if truncations.any():
                self.final_observations[rows] = half.final_observations
        return self.observations, self.rewards, self.terminals, self.truncations, []

    def send(self, actions: Any) -> None:
        if self._pending is not None:
            raise RuntimeError("send() called twice without recv(); call recv() to collect the last step")
        self._pending = self.step(actions)

    def recv(self) -> Any:
        from shoal.envs.native import Batch

        result, self._pending = self._pending, None
        if result is None:
            result = (self.observations, self.rewards, self.terminals, self.truncations, [])
        obs, rewards, terminals, truncations, _ = result
        return Batch(
            obs, rewards, terminals, truncations, self.final_observations, [], self.agent_ids, self.masks
        )

    def log(self) -> dict[str, float]:
        """Means over the episodes both halves finished since the last call; {} if none."""
        logs = [half.log() for half in self.halves]
        total = sum(log.get("episodes", 0) for log in logs)
        if total <= 0:
            return {}
        merged: dict[str, float] = {
            key: sum(log[key] * log["episodes"] for log in logs if log) / total
            for key in ("score", "episode_return", "episode_length")
        }
        merged["episodes"] = int(total)
        return merged

    def render(self, index: int = 0) -> str:
        first = self.halves[0]
        if index < first.num_envs:
            return first.render(index)
        return self.halves[1].render(index - first.num_envs)

    def close(self) -> None:
        for half in self.halves:
            half.close()

    @property
    def closed(self) -> bool:
        return all(half.closed for half in self.halves)

    def __enter__(self) -> EnvHalves:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        counts = ", ".join(str(h.num_envs) for h in self.halves)
        return (
            f"EnvHalves('{self.name}', num_envs={self.num_envs} ({counts}), "
            f"num_threads={self.num_threads} each)"
        )


class EnvStepper:
    """A thread that steps env halves on request: `start(env, actions)`, then `wait()`.

    One step is in flight at a time. `busy` sums the seconds the thread spent stepping.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight = False
        self.busy = 0.0
        self._thread = threading.Thread(target=self._run, name="shoal-env-stepper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        clock = time.perf_counter
        while True:
            item = self._requests.get()
            if item is None:
                return
            env, actions = item
            t0 = clock()
            try:
                env.step(actions)
                result: BaseException | None = None
            except BaseException as e:  # handed to the caller's wait()
                result = e
            self.busy += clock() - t0
            self._results.put(result)

    def start(self, env: Any, actions: np.ndarray) -> None:
        if self._in_flight:
            raise RuntimeError("EnvStepper.start() while a step is in flight; call wait() first")
        self._in_flight = True
        self._requests.put((env, actions))

    def wait(self) -> None:
        if not self._in_flight:
            return
        result = self._results.get()
        self._in_flight = False
        if result is not None:
            raise result

    def close(self) -> None:
        """Finish a step in flight (its error, if any, is dropped) and stop the thread."""
        if self._in_flight:
            self._results.get()
            self._in_flight = False
        self._requests.put(None)
        self._thread.join()
