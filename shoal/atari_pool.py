"""Atari through EnvPool (``env.backend = "envpool"``): ale-py's games stepped by EnvPool's C++
thread pool, with the episodes, rewards and statistics of ``shoal.atari``.

EnvPool does the frame skip with max-pooling, the no-op starts, FIRE after a reset, the 84x84
grayscale resize (OpenCV's area interpolation, as Gymnasium's AtariPreprocessing) and the
frame stack in C++. Three things are done here instead, so that a run sees what the ale-py
backend gives it:

- **Same-step resets.** EnvPool resets a finished game on the *next* step, whose action it
  ignores; the trainer would learn from that step. At a game's end this adapter resets the
  finished envs at once (EnvPool's ``reset(env_ids)``), so the step returns the next game's
  first observation, as every Shoal vector env does.
- **Lost lives.** EnvPool's own ``episodic_life`` restarts the game when such a reset follows a
  lost life, so it stays off: a lost life ends the training episode here (terminated, with
  ``info["episode_continues"]``) while the game goes on.
- **Rewards.** EnvPool gives the game's rewards; the training rewards are clipped to their sign
  here and the statistics count the true score of each whole game.

Only ale-py v5 ids (``ALE/Pong-v5``) are accepted, with their settings: sticky actions with
probability 0.25, the minimal action set, at most 108,000 frames a game.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from shoal.atari import split_options
from shoal.core.checks import check_int, check_positive_int
from shoal.emulation import _EmulatedVecEnv

ENVPOOL_EXTRA = "pip install -e '.[envpool]'  (or: pip install envpool)"
V5_ID = re.compile(r"^ALE/(?P<game>[A-Za-z0-9]+)-v5$")
# ale-py's v5 settings that a run may change, with their defaults.
ALE_V5_DEFAULTS: dict[str, Any] = {
    "repeat_action_probability": 0.25,
    "full_action_space": False,
    "max_num_frames_per_episode": 108_000,
    "mode": None,
    "difficulty": None,
}

PoolFactory = Callable[..., Any]


def envpool_task(env_id: str) -> str:
    """EnvPool's name of the ale-py v5 game `env_id` ("ALE/Pong-v5" -> "Pong-v5")."""
    match = V5_ID.match(env_id)
    if match is None:
        raise ValueError(
            f"env.backend = 'envpool' runs ale-py v5 games, named like 'ALE/Pong-v5'; got {env_id!r}"
        )
    return f"{match['game']}-v5"


def pool_settings(env_id: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shoal.atari's preprocessing options, the keyword arguments of ``envpool.make``) for the
    game `env_id` with the options a run gives (the same keys as the ale-py backend's)."""
    envpool_task(env_id)
    pre, ale_options = split_options(options)
    unknown = sorted(set(ale_options) - set(ALE_V5_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Atari option(s) {', '.join(map(repr, unknown))} are not available with env.backend = "
            f"'envpool'; it takes {', '.join(sorted([*pre, *ALE_V5_DEFAULTS]))}"
        )
    ale = {**ALE_V5_DEFAULTS, **ale_options}
    frames = check_positive_int("Atari option max_num_frames_per_episode", ale["max_num_frames_per_episode"])
    kwargs: dict[str, Any] = {
        "frame_skip": pre["frameskip"],
        "stack_num": pre["frame_stack"],
        "img_height": pre["screen_size"],
        "img_width": pre["screen_size"],
        "noop_max": pre["noop_max"],
        "repeat_action_probability": float(ale["repeat_action_probability"]),
        "full_action_space": bool(ale["full_action_space"]),
        "max_episode_steps": max(1, frames // pre["frameskip"]),
        # Lives and clipping are this adapter's (module docstring); the rest as ale-py + Gymnasium.
        "episodic_life": False,
        "reward_clip": False,
        "zero_discount_on_life_loss": False,
        "use_fire_reset": True,
        "gray_scale": True,
        "use_inter_area_resize": True,
    }
    for key in ("mode", "difficulty"):
        if ale[key] is not None:
            kwargs[key] = check_int(f"Atari option {key}", ale[key])
    return pre, kwargs


def _envpool_make() -> PoolFactory:
    try:
        import envpool
    except ImportError as e:
        raise ImportError(
            f"env.backend = 'envpool' needs EnvPool, which is not installed: {ENVPOOL_EXTRA}"
        ) from e
    return envpool.make


class EnvPoolAtariVecEnv(_EmulatedVecEnv):
    """`num_envs` copies of an ale-py v5 game in one EnvPool, under the Shoal vector-env contract
    (module docstring). `num_threads` 0 gives one thread per core, at most one per env."""

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        seed: int = 0,
        num_threads: int = 0,
        pool_factory: PoolFactory | None = None,
        **options: Any,
    ) -> None:
        num_envs = check_positive_int("num_envs", num_envs)
        num_threads = check_int("num_threads", num_threads)
        if num_threads <= 0:
            num_threads = min(num_envs, len(os.sched_getaffinity(0)))
        pre, kwargs = pool_settings(env_id, options)
        self.life_loss: bool = pre["terminal_on_life_loss"]
        self.clip_rewards: bool = pre["clip_rewards"]
        factory = pool_factory or _envpool_make()
        task = envpool_task(env_id)

        def make_pool(pool_seed: int) -> Any:
            return factory(
                task, env_type="gymnasium", num_envs=num_envs, batch_size=num_envs,
                num_threads=num_threads, seed=pool_seed, **kwargs,
            )

        self._make_pool = make_pool
        self._pool = make_pool(check_int("seed", seed))
        self._pool_seed: int | None = seed  # the seed the pool was built with, until its first reset
        super().__init__(num_envs, 1, self._pool.observation_space, self._pool.action_space, seed)
        self._lives = np.zeros(num_envs, dtype=np.int64)
        self._scores = np.zeros(num_envs, dtype=np.float64)

    def _reset_all(self, base_seed: int | None) -> None:
        # EnvPool seeds its envs only when it is built: a seeded reset builds a new pool (the
        # first reset with the constructor's seed uses the one already built).
        if base_seed is not None and base_seed != self._pool_seed:
            self._pool.close()
            self._pool = self._make_pool(base_seed)
        self._pool_seed = None
        obs, info = self._pool.reset()
        rows = self._rows(info)
        self.observations[rows] = obs.reshape(len(rows), -1)
        self._lives[rows] = info["lives"]
        self._scores[:] = 0.0

    def _rows(self, info: dict[str, Any]) -> np.ndarray:
        """The env index of each row of a result from the pool."""
        return np.asarray(info["env_id"], dtype=np.int64)

    def _step_all(self, actions: np.ndarray) -> None:
        obs, reward, terminated, truncated, info = self._pool.step(np.asarray(actions, dtype=np.int32))
        rows = self._rows(info)
        reward = np.asarray(reward, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool) & ~terminated
        game_over = terminated | truncated
        lives = np.asarray(info["lives"], dtype=np.int64)
        life_lost = (lives < self._lives[rows]) & ~game_over if self.life_loss else np.zeros_like(game_over)
        self._lives[rows] = lives
        self._scores[rows] += reward
        self._stats.lengths[rows] += 1
        self.rewards[rows] = np.sign(reward) if self.clip_rewards else reward
        self.terminals[rows] = terminated | life_lost
        self.truncations[rows] = truncated
        self.observations[rows] = obs.reshape(len(rows), -1)
        self._infos.extend({"episode_continues": True} for _ in range(int(life_lost.sum())))
        ended = rows[game_over]
        if ended.size:
            self._end_games(ended)

    def _end_games(self, ended: np.ndarray) -> None:
        """Record the finished games of envs `ended` and start their next ones in this step."""
        for i in ended.tolist():
            if self.truncations[i]:
                self.final_observations[i] = self.observations[i]
            info = {"episode_return": float(self._scores[i]), "score": float(self._scores[i])}
            self._stats.finish(i, info)
            self._infos.append(info)
        obs, info = self._pool.reset(ended.astype(np.int32))
        rows = self._rows(info)
        self.observations[rows] = obs.reshape(len(rows), -1)
        self._lives[rows] = info["lives"]
        self._scores[rows] = 0.0

    def render(self) -> str:
        return self._describe(self.observations[0])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.close()


def make_envpool_atari(
    env_id: str, num_envs: int = 1, seed: int = 0, num_threads: int = 0, **options: Any
) -> EnvPoolAtariVecEnv:
    """An ale-py v5 game (``"ALE/Pong-v5"``) in EnvPool; `options` as for the ale-py backend
    (shoal.atari: frameskip, frame_stack, screen_size, noop_max, terminal_on_life_loss,
    clip_rewards, repeat_action_probability, full_action_space, max_num_frames_per_episode,
    mode, difficulty)."""
    return EnvPoolAtariVecEnv(env_id, num_envs, seed, num_threads, **options)
