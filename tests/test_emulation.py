"""Gymnasium / PettingZoo adapters: flattening, structured actions, auto-reset, masks, statistics."""

from __future__ import annotations

import subprocess
import sys

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv

import shoal
from shoal.core.contract import AsyncVecEnv, VecEnv
from shoal.emulation import ObsFlattener, check_actions, make_gymnasium, make_pettingzoo

STRUCTURED_OBS = spaces.Dict(
    {
        "pos": spaces.Box(-2.0, 2.0, shape=(2, 3), dtype=np.float32),
        "id": spaces.Discrete(4, start=1),
        "flags": spaces.MultiBinary(3),
        "nested": spaces.Tuple((spaces.Discrete(2), spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32))),
        "grid": spaces.MultiDiscrete([2, 3]),
    }
)
STRUCTURED_ACTIONS = spaces.Dict(
    {
        "move": spaces.Discrete(3, start=-1),
        "fire": spaces.MultiBinary(2),
        "aim": spaces.Tuple((spaces.Discrete(4),)),
    }
)


class StructuredEnv(gymnasium.Env):
    """Samples observations from STRUCTURED_OBS and remembers what it was asked to do."""

    observation_space = STRUCTURED_OBS
    action_space = STRUCTURED_ACTIONS

    def __init__(self, episode_length: int = 3) -> None:
        self.episode_length = episode_length
        self.received: list = []
        self.emitted: list = []

    def _observe(self):
        obs = self.observation_space.sample()
        self.emitted.append(obs)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t = 0
        return self._observe(), {}

    def step(self, action):
        self.received.append(action)
        self.t += 1
        info = {"score": 100.0 + self.t} if self.t == self.episode_length else {}
        return self._observe(), 1.0, self.t == self.episode_length, False, info


def _same_structure(restored, original) -> None:
    if isinstance(original, dict):
        assert list(restored) == list(original)
        for key in original:
            _same_structure(restored[key], original[key])
    elif isinstance(original, tuple):
        assert len(restored) == len(original)
        for a, b in zip(restored, original, strict=True):
            _same_structure(a, b)
    else:
        restored = restored.numpy() if isinstance(restored, torch.Tensor) else np.asarray(restored)
        np.testing.assert_array_equal(restored.astype(np.float64), np.asarray(original).astype(np.float64))


def test_cartpole_contract_seeding_and_stats() -> None:
    env = make_gymnasium("CartPole-v1", num_envs=3, seed=7)
    twin = make_gymnasium("CartPole-v1", num_envs=3, seed=7)
    assert (env.num_envs, env.agents_per_env, env.num_agents) == (3, 1, 3)
    assert env.single_observation_space.shape == (4,) and env.single_action_space == spaces.Discrete(2)
    obs, infos = env.reset()
    twin_obs, _ = twin.reset()
    assert obs is env.observations and obs.dtype == np.float32 and infos == []
    np.testing.assert_array_equal(obs, twin_obs)
    raw = gymnasium.make("CartPole-v1")
    np.testing.assert_array_equal(obs[1], raw.reset(seed=8)[0])
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(150):
        actions = rng.integers(0, 2, size=3)
        obs, rewards, terminals, truncations, _ = env.step(actions)
        twin.step(actions)
        np.testing.assert_array_equal(obs, twin.observations)
        assert rewards.dtype == np.float32 and terminals.dtype == np.bool_
        ends += int(terminals.sum() + truncations.sum())
    stats = env.log()
    assert stats["episodes"] == ends > 0
    assert stats["score"] == stats["episode_return"] == stats["episode_length"]
    assert env.log() == {}
    env.close()
    twin.close()


def test_truncation_fills_final_observations_and_auto_resets() -> None:
    env = make_gymnasium("CartPole-v1", num_envs=1, seed=3, max_episode_steps=4)
    raw = gymnasium.make("CartPole-v1", max_episode_steps=4)
    env.reset()
    raw.reset(seed=3)
    for t in range(4):
        action = t % 2
        obs, _, terminals, truncations, _ = env.step(np.array([action]))
        raw_obs, _, raw_term, raw_trunc, _ = raw.step(action)
    assert truncations[0] and not terminals[0] and raw_trunc and not raw_term
    np.testing.assert_array_equal(env.final_observations[0], raw_obs)
    np.testing.assert_array_equal(obs[0], raw.reset()[0])
    assert env.log()["episode_length"] == 4.0


def test_structured_observations_round_trip_numpy_and_torch() -> None:
    env = make_gymnasium(StructuredEnv, num_envs=2, seed=1)
    size = 6 + 4 + 3 + (2 + 1) + (2 + 3)
    assert env.single_observation_space.shape == (size,)
    assert env.single_observation_space.dtype == np.float32
    env.reset()
    env.step(np.zeros((2, 4), dtype=np.int64))
    for i, sub in enumerate(env.envs):
        original = sub.emitted[-1]
        _same_structure(env.unflatten(env.observations)["pos"][i], original["pos"])
        restored = env.unflatten(env.observations[i])
        _same_structure(restored, original)
        restored_batch = env.unflatten(torch.from_numpy(env.observations))
        _same_structure(restored_batch["nested"][0][i], original["nested"][0])
        restored_torch = env.unflatten(torch.from_numpy(env.observations[i].copy()))
        _same_structure(restored_torch, original)
    with pytest.raises(ValueError, match=f"rows of {size} elements"):
        env.unflatten(np.zeros((2, size + 1), dtype=np.float32))


def test_flattened_dtype_and_bounds() -> None:
    images = spaces.Dict({"a": spaces.Box(0, 255, (2, 2), np.uint8), "b": spaces.Box(0, 9, (3,), np.uint8)})
    flat = ObsFlattener(images)
    assert flat.dtype == np.uint8 and flat.space.shape == (7,) and flat.space.high.max() == 255
    mixed = ObsFlattener(spaces.Tuple((spaces.Box(0, 255, (2,), np.uint8), spaces.Discrete(3))))
    assert mixed.dtype == np.float32
    np.testing.assert_array_equal(mixed.space.high, [255, 255, 1, 1, 1])
    row = np.zeros(5, dtype=np.float32)
    mixed.flatten((np.array([4, 5], dtype=np.uint8), 2), row)
    np.testing.assert_array_equal(row, [4, 5, 0, 0, 1])
    with pytest.raises(ValueError, match="unsupported space"):
        ObsFlattener(spaces.Dict({"text": spaces.Text(5)}))


def test_structured_actions_become_multidiscrete() -> None:
    env = make_gymnasium(StructuredEnv, num_envs=2, seed=0)
    # Gymnasium keeps Dict keys sorted: aim, fire (2 dims), move.
    assert env.single_action_space == spaces.MultiDiscrete([4, 2, 2, 3])
    env.reset()
    env.step(np.array([[3, 1, 0, 0], [0, 0, 1, 2]], dtype=np.int32))
    first, second = env.envs[0].received[-1], env.envs[1].received[-1]
    assert first["move"] == -1 and second["move"] == 1
    np.testing.assert_array_equal(first["fire"], [1, 0])
    np.testing.assert_array_equal(second["fire"], [0, 1])
    assert first["aim"] == (3,) and second["aim"] == (0,)
    with pytest.raises(ValueError, match=r"expected 0 <= a < 2"):
        env.step(np.array([[0, 2, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"expected 0 <= a < 3"):
        env.step(np.array([[0, 0, 0, 0], [0, 0, 0, 3]]))


def test_episode_score_comes_from_info_when_reported() -> None:
    env = make_gymnasium(StructuredEnv, num_envs=1, seed=0, episode_length=3)
    env.reset()
    for _ in range(6):
        env.step(np.zeros((1, 4), dtype=np.int64))
    assert env.log() == {"score": 103.0, "episode_return": 3.0, "episode_length": 3.0, "episodes": 2}


def test_bad_actions_say_expected_and_given() -> None:
    env = make_gymnasium("CartPole-v1", num_envs=2)
    env.reset()
    with pytest.raises(ValueError, match=r"action 2 .* expected 0 <= a < 2"):
        env.step(np.array([0, 2]))
    with pytest.raises(ValueError, match=r"action -1 .* out of range"):
        env.step(np.array([-1, 0]))
    with pytest.raises(TypeError, match="expected integer actions .* got dtype float64"):
        env.step(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected actions of shape \(2,\) .* got \(3,\)"):
        env.step(np.array([0, 1, 0]))
    env.step(np.array([[0], [1]]))  # a trailing action dimension of 1 is accepted

    box = make_gymnasium("Pendulum-v1", num_envs=2)
    box.reset()
    assert box.single_action_space.shape == (1,)
    with pytest.raises(ValueError, match="expected finite continuous actions.*NaN or inf.*row 1"):
        box.step(np.array([[0.5], [np.nan]], dtype=np.float32))
    with pytest.raises(ValueError, match="expected finite"):
        box.step(np.array([[np.inf], [0.0]]))
    with pytest.raises(ValueError, match=r"expected actions of shape \(2, 1\)"):
        box.step(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="expected real-valued"):
        box.step(np.array([["a"], ["b"]]))
    box.step(np.array([[0.5], [-0.5]], dtype=np.float64))
    clipped = check_actions(np.array([[9.0], [-9.0]]), box.single_action_space, 2)
    np.testing.assert_array_equal(clipped, [[2.0], [-2.0]])


def test_step_before_reset_and_bad_arguments() -> None:
    env = make_gymnasium("CartPole-v1", num_envs=1)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0]))
    with pytest.raises(ValueError, match="expected num_envs >= 1, got 0"):
        make_gymnasium("CartPole-v1", num_envs=0)
    with pytest.raises(TypeError, match="expected num_envs to be an integer"):
        make_gymnasium("CartPole-v1", num_envs=2.0)
    with pytest.raises(TypeError, match="expected seed to be an integer"):
        make_gymnasium("CartPole-v1", seed="1")
    env.reset()
    with pytest.raises(TypeError, match="expected seed to be an integer"):
        env.reset(seed=1.0)
    with pytest.raises(TypeError, match="Gymnasium env id or a callable"):
        make_gymnasium(42)


def test_shoal_make_routes_gym_names() -> None:
    env = shoal.make("gym:CartPole-v1", num_envs=2, seed=5)
    assert isinstance(env, VecEnv) and isinstance(env, AsyncVecEnv)
    obs, _ = env.reset()
    assert obs.shape == (2, 4)
    batch = env.recv()
    np.testing.assert_array_equal(batch.agent_ids, [0, 1])
    env.send(np.array([1, 0]))
    obs, rewards, terminals, truncations, final_obs, infos, agent_ids, masks = env.recv()
    assert rewards.tolist() == [1.0, 1.0] and masks.all() and infos == []
    env.close()


# ---- PettingZoo ----


class RelayEnv(ParallelEnv):
    """Three agents: "c" terminates after 2 steps, "a" after 4, "b" is truncated after 5.

    Observations: [step, agent index, a random draw]; reward = the agent's action + 1.
    """

    metadata = {"name": "relay_v0"}

    def __init__(self, obs_size: int = 3) -> None:
        self.possible_agents = ["a", "b", "c"]
        self.ends = {"a": (4, "term"), "b": (5, "trunc"), "c": (2, "term")}
        self._obs_space = spaces.Box(-10.0, 10.0, shape=(obs_size,), dtype=np.float32)
        self._act_space = spaces.Discrete(3)
        self.rng = np.random.default_rng(0)

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _obs(self, agent):
        return np.array([self.t, self.possible_agents.index(agent), self.rng.random()], dtype=np.float32)

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self.agents = list(self.possible_agents)
        return {agent: self._obs(agent) for agent in self.agents}, {agent: {} for agent in self.agents}

    def step(self, actions):
        self.t += 1
        obs, rewards, terms, truncs, infos = {}, {}, {}, {}, {}
        for agent in self.agents:
            obs[agent] = self._obs(agent)
            rewards[agent] = float(actions[agent] + 1)
            end, kind = self.ends[agent]
            terms[agent] = self.t == end and kind == "term"
            truncs[agent] = self.t == end and kind == "trunc"
            infos[agent] = {}
        self.agents = [agent for agent in self.agents if not (terms[agent] or truncs[agent])]
        return obs, rewards, terms, truncs, infos


def relay_env(**kwargs) -> RelayEnv:
    return RelayEnv(**kwargs)


class MixedSpacesEnv(RelayEnv):
    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, shape=(2 if agent == "b" else 3,), dtype=np.float32)


def test_pettingzoo_padding_masks_and_reset() -> None:
    env = make_pettingzoo(relay_env, num_envs=2, seed=11)
    assert (env.agents_per_env, env.num_agents) == (3, 6)
    obs, _ = env.reset()
    assert env.masks.all()
    np.testing.assert_array_equal(obs[:3, 1], [0, 1, 2])
    actions = np.array([0, 1, 2, 2, 1, 0])
    for _ in range(2):
        obs, rewards, terminals, truncations, _ = env.step(actions)
    # Step 2: "c" terminates; it acted, so its row is still real this step.
    np.testing.assert_array_equal(terminals, [False, False, True, False, False, True])
    np.testing.assert_array_equal(rewards, actions + 1)
    assert env.masks.all()
    np.testing.assert_array_equal(obs[2], 0.0)
    obs, rewards, terminals, _, _ = env.step(actions)  # step 3: "c" is absent
    np.testing.assert_array_equal(env.masks, [True, True, False, True, True, False])
    assert rewards[2] == 0.0 and not terminals[2]
    np.testing.assert_array_equal(obs[[2, 5]], 0.0)
    env.step(actions)  # step 4: "a" terminates
    np.testing.assert_array_equal(env.masks, [True, True, False, True, True, False])
    obs, rewards, terminals, truncations, _ = env.step(actions)  # step 5: "b" truncated, env resets
    np.testing.assert_array_equal(truncations, [False, True, False, False, True, False])
    assert env.masks.all()  # everyone is alive again in the new episode
    last_b = env.final_observations[1]
    assert last_b[0] == 5.0 and last_b[1] == 1.0
    np.testing.assert_array_equal(obs[:, 0], 0.0)  # every row holds the new episode's first observation
    np.testing.assert_array_equal(obs[:3, 1], [0, 1, 2])
    stats = env.log()
    assert stats["episodes"] == 6
    assert stats["episode_length"] == pytest.approx((4 + 5 + 2) / 3)
    assert stats["episode_return"] == pytest.approx((4 * 1 + 5 * 2 + 2 * 3 + 4 * 3 + 5 * 2 + 2 * 1) / 6)


def test_pettingzoo_same_seed_same_trajectories_and_spec_strings() -> None:
    first = make_pettingzoo(relay_env, num_envs=2, seed=4)
    second = make_pettingzoo(f"{__name__}:relay_env", num_envs=2, seed=4)
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])
    for _ in range(7):
        actions = np.ones(6, dtype=np.int64)
        np.testing.assert_array_equal(first.step(actions)[0], second.step(actions)[0])
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        make_pettingzoo(f"{__name__}:missing")
    with pytest.raises(ValueError, match="cannot import PettingZoo env module 'no_such_module_here'"):
        make_pettingzoo("no_such_module_here:parallel_env")
    # Names inside PettingZoo may leave out the prefix ("utils.conversions" = "pettingzoo.utils.conversions").
    with pytest.raises(ValueError, match="'pettingzoo.utils.conversions' has no attribute 'parallel_env'"):
        make_pettingzoo("utils.conversions")


def test_pettingzoo_different_agent_spaces_are_rejected() -> None:
    with pytest.raises(ValueError, match="same observation space.*agent 'b' has Box"):
        make_pettingzoo(MixedSpacesEnv)


def test_adapters_and_contract_import_without_the_c_extension() -> None:
    # None in sys.modules makes any import of the compiled extension fail, as if never built.
    script = (
        "import sys\n"
        "sys.modules['shoal.envs._native'] = None\n"
        "import shoal, shoal.core.contract, shoal.emulation, shoal.vector\n"
        "env = shoal.make('gym:CartPole-v1', num_envs=2, seed=0)\n"
        "env.reset()\n"
        "assert isinstance(env, shoal.core.contract.VecEnv)\n"
        "try:\n"
        "    shoal.make('cartpole')\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
