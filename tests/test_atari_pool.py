"""The EnvPool backend (shoal/atari_pool.py): same-step resets, lives, rewards and statistics
against a scripted pool that behaves as EnvPool does, its options, and the real EnvPool where
it is installed."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from shoal.atari_pool import EnvPoolAtariVecEnv, envpool_task, make_envpool_atari, pool_settings
from shoal.core.config import ConfigError, load_config
from shoal.train.trainer import make_env

OBS_SHAPE = (2, 3, 3)
# Observations of a reset game are filled with this value; a step's with the game's step count.
RESET_MARK = 200


class ScriptedPool:
    """EnvPool's gymnasium-style API over scripted games. Env i's step t (counted from its last
    reset) gives reward, lives, terminated, truncated from `script[i][t]` (default 0, 3 lives, not
    done). Like EnvPool, a step after a finished game that no reset(env_ids) followed ignores its
    action and resets: such steps are counted in `late_resets`."""

    built: list[dict[str, Any]] = []

    def __init__(
        self, task: str, *, num_envs: int, seed: int, script: dict | None = None, **kwargs: Any
    ) -> None:
        ScriptedPool.built.append({"task": task, "num_envs": num_envs, "seed": seed, **kwargs})
        self.num_envs = num_envs
        self.script = script or {}
        self.observation_space = spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.action_space = spaces.Discrete(3)
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.lives = np.full(num_envs, 3)
        self.finished = np.zeros(num_envs, dtype=bool)
        self.late_resets = 0
        self.closed = False

    def _info(self, ids: np.ndarray) -> dict[str, Any]:
        return {"env_id": ids.astype(np.int32), "lives": self.lives[ids].copy()}

    def reset(self, env_id: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        ids = np.arange(self.num_envs) if env_id is None else np.asarray(env_id)
        self.elapsed[ids] = 0
        self.lives[ids] = 3
        self.finished[ids] = False
        return np.full((len(ids), *OBS_SHAPE), RESET_MARK, np.uint8), self._info(ids)

    def step(self, actions: np.ndarray):
        assert actions.dtype == np.int32 and actions.shape == (self.num_envs,)
        n = self.num_envs
        obs = np.zeros((n, *OBS_SHAPE), np.uint8)
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        for i in range(n):
            if self.finished[i]:
                self.late_resets += 1
                self.elapsed[i], self.lives[i], self.finished[i] = 0, 3, False
                obs[i] = RESET_MARK
                continue
            self.elapsed[i] += 1
            event = self.script.get(i, {}).get(int(self.elapsed[i]), (0.0, None, False, False))
            r, lives, term, trunc = event
            if lives is not None:
                self.lives[i] = lives
            reward[i], terminated[i], truncated[i] = r, term, trunc
            self.finished[i] = term or trunc
            obs[i] = self.elapsed[i]
        return obs, reward, terminated, truncated, self._info(np.arange(n))

    def close(self) -> None:
        self.closed = True


def scripted(script: dict, num_envs: int = 2, **options: Any) -> EnvPoolAtariVecEnv:
    def factory(task: str, **kwargs: Any) -> ScriptedPool:
        return ScriptedPool(task, script=script, **kwargs)

    return EnvPoolAtariVecEnv("ALE/Pong-v5", num_envs, 7, 1, pool_factory=factory, **options)


def test_a_finished_game_restarts_in_the_same_step_with_its_true_score():
    # Env 1 scores 2, -1, 5 and its game ends at its third step.
    game = {1: (2.0, None, False, False), 2: (-1.0, None, False, False), 3: (5.0, 0, True, False)}
    env = scripted({1: game})
    obs, _ = env.reset()
    assert (obs == RESET_MARK).all()
    rewards = []
    for _ in range(3):
        obs, reward, terminals, truncations, infos = env.step(np.zeros(2, np.int64))
        rewards.append(reward[1])
    assert rewards == [1.0, -1.0, 1.0]  # clipped for training
    assert terminals.tolist() == [False, True] and truncations.tolist() == [False, False]
    assert (obs[1] == RESET_MARK).all() and (obs[0] == 3).all()
    assert infos == [{"episode_return": 6.0, "score": 6.0}]
    assert env.log() == {"score": 6.0, "episode_return": 6.0, "episode_length": 3.0, "episodes": 1}
    obs, *_ = env.step(np.zeros(2, np.int64))
    # The next game goes on from its reset: EnvPool never had to reset it on its own.
    assert (obs[1] == 1).all() and env._pool.late_resets == 0


def test_a_lost_life_ends_the_training_episode_and_the_game_goes_on():
    env = scripted({0: {2: (0.0, 2, False, False), 4: (1.0, 1, False, False), 5: (3.0, 0, True, False)}})
    env.reset()
    for t in range(1, 6):
        obs, _, terminals, _, infos = env.step(np.zeros(2, np.int64))
        if t in (2, 4):
            assert terminals[0] and infos == [{"episode_continues": True}]
            assert (obs[0] == t).all()  # the same game's next frame, not a reset
            assert env.log() == {}
    assert terminals[0] and (obs[0] == RESET_MARK).all()
    assert env.log()["score"] == 4.0


def test_life_loss_and_clipping_can_be_turned_off():
    env = scripted({0: {1: (3.0, 2, False, False)}}, terminal_on_life_loss=False, clip_rewards=False)
    env.reset()
    _, reward, terminals, _, infos = env.step(np.zeros(2, np.int64))
    assert reward[0] == 3.0 and not terminals[0] and infos == []


def test_a_truncated_game_keeps_its_last_observation():
    env = scripted({0: {2: (0.0, None, False, True)}})
    env.reset()
    env.step(np.zeros(2, np.int64))
    obs, _, terminals, truncations, _ = env.step(np.zeros(2, np.int64))
    assert truncations.tolist() == [True, False] and not terminals[0]
    assert (env.final_observations[0] == 2).all() and (obs[0] == RESET_MARK).all()


def test_pool_settings_and_seeds():
    ScriptedPool.built.clear()
    env = scripted({}, frameskip=2, repeat_action_probability=0.0)
    built = ScriptedPool.built[-1]
    assert built["task"] == "Pong-v5" and built["seed"] == 7 and built["batch_size"] == 2
    assert built["frame_skip"] == 2 and built["max_episode_steps"] == 54_000
    assert built["repeat_action_probability"] == 0.0
    assert not built["episodic_life"] and not built["reward_clip"]
    env.reset()  # the constructor's seed: the pool already built is used
    assert len(ScriptedPool.built) == 1
    env.reset(seed=7)  # a seeded reset restarts the pool from that seed, even the same one
    env.reset(seed=9)
    assert [b["seed"] for b in ScriptedPool.built] == [7, 7, 9]
    pool = env._pool
    env.close()
    assert pool.closed


def test_bad_ids_and_options_are_named():
    with pytest.raises(ValueError, match=r"named like 'ALE/Pong-v5'; got 'PongNoFrameskip-v4'"):
        envpool_task("PongNoFrameskip-v4")
    with pytest.raises(ValueError, match=r"'obs_type' are not available with env.backend = 'envpool'"):
        pool_settings("ALE/Pong-v5", {"obs_type": "rgb"})
    with pytest.raises(ValueError, match="frameskip"):
        pool_settings("ALE/Pong-v5", {"frameskip": 0})


def test_missing_envpool_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)
    with pytest.raises(ImportError, match=r"pip install -e '.\[envpool\]'"):
        make_envpool_atari("ALE/Pong-v5")


def test_the_trainer_refuses_envpool_for_other_envs():
    cfg = load_config("cartpole", ["--env.backend", "envpool"])
    with pytest.raises(ConfigError, match="env.backend = 'envpool' runs ale-py games"):
        make_env(cfg)


def test_real_envpool_gives_the_ale_backends_observations():
    pytest.importorskip("envpool")
    pytest.importorskip("ale_py")
    from shoal.emulation import make_gymnasium

    with (
        make_envpool_atari("ALE/Breakout-v5", num_envs=2, seed=0) as pool,
        make_gymnasium("ALE/Breakout-v5") as ale,
    ):
        assert pool.structured_observation_space == ale.structured_observation_space
        assert pool.single_observation_space == ale.single_observation_space
        assert pool.single_action_space == ale.single_action_space
        pool.reset()
        rng = np.random.default_rng(0)
        continues = 0
        while not pool.log():
            _, reward, *_, infos = pool.step(rng.integers(0, 4, 2))
            continues += sum(1 for info in infos if info.get("episode_continues"))
            assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
        # Breakout has 5 lives: a game is 4 lost lives and a game over.
        assert continues >= 4
