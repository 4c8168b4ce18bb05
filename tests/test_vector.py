"""Serial and multiprocessing backends: same trajectories, send/recv, errors, clean shutdown.

Process start is slow on a small machine, so the multiprocessing tests are few and each does
several checks on one env.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv

from shoal import vector
from shoal.core.contract import AsyncVecEnv, VecEnv
from shoal.emulation import make_gymnasium, make_pettingzoo

CARTPOLE = functools.partial(make_gymnasium, "CartPole-v1")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def greedy(obs: np.ndarray) -> np.ndarray:
    """A deterministic policy: each env's trajectory then depends only on its own seed."""
    return (obs[:, 2] > 0).astype(np.int64)


def run_steps(env, steps: int) -> np.ndarray:
    obs, _ = env.reset()
    frames = [obs.copy()]
    for _ in range(steps):
        obs, *_ = env.step(greedy(obs))
        frames.append(obs.copy())
    return np.stack(frames)


class BrokenStepEnv(gymnasium.Wrapper):
    def __init__(self, env: gymnasium.Env, fail_at: int) -> None:
        super().__init__(env)
        self.fail_at, self.steps = fail_at, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise ValueError(f"boom at step {self.steps}")
        return self.env.step(action)


def cartpole_failing_in_worker_1(num_envs: int, seed: int):
    """Worker 1 (seed 1 with one env per worker) fails on its third step."""
    fail_at = 3 if seed == 1 else -1
    return make_gymnasium(lambda: BrokenStepEnv(gymnasium.make("CartPole-v1"), fail_at), num_envs, seed)


def failing_creator(num_envs: int, seed: int):
    if seed == 1:
        raise KeyError("no such level")
    return make_gymnasium("CartPole-v1", num_envs, seed)


def gated_cartpole(num_envs: int, seed: int, gate: str):
    """Workers 1 and 2 (seeds 1 and 2) hold every step until the file `gate` exists."""
    env = make_gymnasium("CartPole-v1", num_envs, seed)
    if seed in (1, 2):
        step = env.step

        def gated_step(actions):
            while not os.path.exists(gate):
                time.sleep(0.01)
            return step(actions)

        env.step = gated_step
    return env


def sleepy_cartpole(num_envs: int, seed: int):
    env = make_gymnasium("CartPole-v1", num_envs, seed)
    step = env.step

    def slow_step(actions):
        time.sleep(60)
        return step(actions)

    env.step = slow_step
    return env


class DuelEnv(ParallelEnv):
    """Two agents; "hunter" terminates after 3 steps, "prey" is truncated after 6."""

    metadata = {"name": "duel_v0"}

    def __init__(self) -> None:
        self.possible_agents = ["hunter", "prey"]
        self.rng = np.random.default_rng(0)

    def observation_space(self, agent):
        return spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), "t": spaces.Discrete(8)})

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _obs(self):
        return {"pos": self.rng.uniform(-1, 1, 2).astype(np.float32), "t": self.t}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: self._obs() for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        obs = {a: self._obs() for a in self.agents}
        rewards = {a: float(actions[a]) for a in self.agents}
        terms = {a: a == "hunter" and self.t == 3 for a in self.agents}
        truncs = {a: a == "prey" and self.t == 6 for a in self.agents}
        infos = {a: ({"caught": True} if terms[a] else {}) for a in self.agents}
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        return obs, rewards, terms, truncs, infos


DUEL = functools.partial(make_pettingzoo, DuelEnv)


def test_layout_is_validated_before_anything_starts() -> None:
    with pytest.raises(ValueError, match=r"num_envs \(6\) must be a multiple of num_workers \(4\)"):
        vector.make(CARTPOLE, "multiprocessing", num_envs=6, num_workers=4)
    with pytest.raises(ValueError, match=r"expected num_envs >= 1, got 0"):
        vector.make(CARTPOLE, "multiprocessing", num_envs=0)
    with pytest.raises(TypeError, match="expected seed to be an integer"):
        vector.make(CARTPOLE, "multiprocessing", num_envs=2, seed=0.5)
    with pytest.raises(ValueError, match="expected backend in"):
        vector.make(CARTPOLE, "threads", num_envs=2)
    with pytest.raises(ValueError, match="fork is unsafe"):
        vector.make(CARTPOLE, "multiprocessing", num_envs=2, context="fork")
    with pytest.raises(TypeError, match="num_workers to be an int"):
        vector.make(CARTPOLE, "serial", num_envs=2, num_workers=1.5)
    with pytest.raises(TypeError, match="must be picklable"):
        vector.make(lambda num_envs, seed: CARTPOLE(num_envs, seed), "multiprocessing", num_envs=2)


def pendulum_or_cartpole(num_envs: int, seed: int):
    return make_gymnasium("Pendulum-v1" if seed else "CartPole-v1", num_envs, seed)


def test_chunks_must_agree_and_be_vector_envs() -> None:
    with pytest.raises(ValueError, match="worker 1's env has observation_space Box"):
        vector.make(pendulum_or_cartpole, "serial", num_envs=2, num_workers=2)
    with pytest.raises(ValueError, match="asked for 2 envs but returned 1"):
        vector.make(lambda num_envs, seed: CARTPOLE(1, seed), "serial", num_envs=2)
    with pytest.raises(TypeError, match="must return a Shoal vector env; got CartPoleEnv"):
        vector.make(lambda num_envs, seed: gymnasium.make("CartPole-v1").unwrapped, "serial", num_envs=1)


def test_serial_chunks_match_one_env_and_aggregate_logs() -> None:
    chunked = vector.make(CARTPOLE, "serial", num_envs=4, num_workers=2, seed=5)
    single = CARTPOLE(num_envs=4, seed=5)
    assert chunked.single_observation_space == single.single_observation_space
    np.testing.assert_array_equal(run_steps(chunked, 120), run_steps(single, 120))
    merged, alone = chunked.log(), single.log()
    assert merged["episodes"] == alone["episodes"] > 0
    assert merged["score"] == pytest.approx(alone["score"])
    assert chunked.log() == {}
    with pytest.raises(ValueError, match=r"expected actions of shape \(4,\)"):
        chunked.step(np.zeros(3, dtype=np.int64))
    chunked.close()


def test_serial_send_recv_is_step_in_two_calls() -> None:
    steps = 30
    reference = run_steps(vector.make(CARTPOLE, "serial", num_envs=4, num_workers=2, seed=2), steps)
    env = vector.make(CARTPOLE, "serial", num_envs=4, num_workers=2, seed=2)
    assert isinstance(env, VecEnv) and isinstance(env, AsyncVecEnv)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before send\(\)"):
        env.send(np.zeros(4, dtype=np.int64))
    env.reset()
    batch = env.recv()  # right after reset: the reset observations
    assert batch.agent_ids.tolist() == [0, 1, 2, 3] and batch.masks.all()
    for t in range(1, steps + 1):
        env.send(greedy(batch.observations))
        batch = env.recv()
        np.testing.assert_array_equal(batch.observations, reference[t])
    with pytest.raises(RuntimeError, match="recv\\(\\) has no step to collect"):
        env.recv()
    env.send(greedy(batch.observations))
    with pytest.raises(RuntimeError, match="send\\(\\) called twice"):
        env.send(greedy(batch.observations))
    with pytest.raises(RuntimeError, match="in flight"):
        env.step(greedy(batch.observations))
    env.close()


def test_multiprocessing_cartpole_matches_serial_and_shuts_down() -> None:
    serial = vector.make(CARTPOLE, "serial", num_envs=4, num_workers=2, seed=9)
    env = vector.make(CARTPOLE, "multiprocessing", num_envs=4, num_workers=2, seed=9)
    try:
        np.testing.assert_array_equal(run_steps(env, 100), run_steps(serial, 100))
        assert env.log() == serial.log()
        assert "observation" in env.render()
        with pytest.raises(ValueError, match="out of range"):
            env.step(np.array([0, 1, 5, 0]))
        env.step(np.zeros(4, dtype=np.int64))  # a rejected batch leaves the env usable
        shm_name = env._resources["shm"].name
    finally:
        env.close()
    assert not any(alive(pid) for pid in env.worker_pids)
    assert not os.path.exists(f"/dev/shm/{shm_name.lstrip('/')}")
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(4, dtype=np.int64))


def test_multiprocessing_send_returns_while_workers_step(tmp_path) -> None:
    steps = 5
    reference = run_steps(vector.make(CARTPOLE, "serial", num_envs=4, num_workers=4), steps)
    gate = tmp_path / "open"
    env = vector.make(gated_cartpole, "multiprocessing", num_envs=4, num_workers=4,
                      env_kwargs={"gate": str(gate)}, context="forkserver", timeout=60)
    try:
        obs, _ = env.reset()
        batch = env.recv()  # right after reset: the reset observations
        assert batch.agent_ids.tolist() == [0, 1, 2, 3] and batch.masks.all()
        np.testing.assert_array_equal(batch.observations, reference[0])
        # Workers 1 and 2 cannot finish this step until the gate opens, yet send() returns.
        env.send(greedy(obs))
        with pytest.raises(RuntimeError, match="in flight"):
            env.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(RuntimeError, match="send\\(\\) called twice"):
            env.send(np.zeros(4, dtype=np.int64))
        gate.touch()
        for t in range(1, steps + 1):
            obs, rewards, terminals, truncations, final_obs, infos, agent_ids, masks = env.recv()
            np.testing.assert_array_equal(obs, reference[t])
            np.testing.assert_array_equal(rewards, 1.0)
            assert agent_ids.tolist() == [0, 1, 2, 3] and masks.all()
            if t < steps:
                env.send(greedy(obs))
        with pytest.raises(RuntimeError, match="recv\\(\\) has no step to collect"):
            env.recv()
    finally:
        env.close()


def test_multiprocessing_pettingzoo_matches_serial() -> None:
    serial = vector.make(DUEL, "serial", num_envs=2, num_workers=2, seed=3)
    env = vector.make(DUEL, "multiprocessing", num_envs=2, num_workers=2, seed=3)
    try:
        assert env.agents_per_env == 2 and env.num_agents == 4
        assert env.single_observation_space.shape == (10,)
        obs, _ = env.reset()
        serial.reset()
        actions = np.array([1, 0, 0, 1])
        for t in range(1, 8):
            obs, rewards, terminals, truncations, infos = env.step(actions)
            s_obs, s_rewards, s_terminals, s_truncations, s_infos = serial.step(actions)
            np.testing.assert_array_equal(obs, s_obs)
            np.testing.assert_array_equal(env.masks, serial.masks)
            np.testing.assert_array_equal(truncations, s_truncations)
            assert infos == s_infos
            if t == 3:
                assert terminals.tolist() == [True, False, True, False]
                assert infos == [{"caught": True}, {"caught": True}]
            if t == 4:
                assert env.masks.tolist() == [False, True, False, True]
            if t == 6:
                np.testing.assert_array_equal(env.final_observations[[1, 3]],
                                              serial.final_observations[[1, 3]])
        restored = env.unflatten(obs)
        assert restored["pos"].shape == (4, 2) and restored["t"].tolist() == [1, 1, 1, 1]
        assert env.log() == serial.log()
    finally:
        env.close()
        serial.close()


def test_worker_exception_names_the_worker() -> None:
    env = vector.make(cartpole_failing_in_worker_1, "multiprocessing", num_envs=2, num_workers=2)
    try:
        env.reset()
        env.step(np.zeros(2, dtype=np.int64))
        env.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match=r"(?s)worker 1 raised ValueError: boom at step 3.*Traceback"):
            env.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="failed earlier"):
            env.step(np.zeros(2, dtype=np.int64))
    finally:
        env.close()
    with pytest.raises(RuntimeError, match=r"worker 1 raised KeyError: 'no such level'"):
        vector.make(failing_creator, "multiprocessing", num_envs=2, num_workers=2)


def test_killed_worker_and_stuck_worker_do_not_hang() -> None:
    env = vector.make(CARTPOLE, "multiprocessing", num_envs=2, num_workers=2)
    try:
        env.reset()
        os.kill(env.worker_pids[1], signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+\) was killed by signal SIGKILL"):
            env.step(np.zeros(2, dtype=np.int64))
    finally:
        env.close()
    stuck = vector.make(sleepy_cartpole, "multiprocessing", num_envs=1, num_workers=1, timeout=0.5)
    try:
        stuck.reset()
        with pytest.raises(RuntimeError, match=r"workers \[0\] did not answer within 0.5 s"):
            stuck.step(np.zeros(1, dtype=np.int64))
    finally:
        stuck.close()
    assert not any(alive(pid) for pid in stuck.worker_pids + env.worker_pids)


def test_native_cartpole_through_multiprocessing() -> None:
    kwargs = {"num_envs": 8, "num_workers": 2, "seed": 4, "env_kwargs": {"num_threads": 1}}
    serial = vector.make("cartpole", "serial", **kwargs)
    env = vector.make("cartpole", "multiprocessing", **kwargs)
    try:
        assert env.single_action_space == spaces.Discrete(2) and env.observations.shape == (8, 4)
        rng = np.random.default_rng(0)
        env.reset()
        serial.reset()
        for _ in range(150):
            actions = rng.integers(0, 2, size=8).astype(np.int32)
            obs, rewards, terminals, truncations, _ = env.step(actions)
            np.testing.assert_array_equal(obs, serial.step(actions)[0])
            np.testing.assert_array_equal(terminals, serial.terminals)
        stats = env.log()
        assert stats == serial.log() and stats["episodes"] > 0
        assert env.render() == serial.render()
    finally:
        env.close()
        serial.close()


def test_builtin_pettingzoo_rps_through_both_backends() -> None:
    # A real PettingZoo env (classic rock-paper-scissors, 2 agents, 100-move games).
    pytest.importorskip("pygame", reason="pettingzoo.classic imports pygame (pip install -e '.[dev]')")
    rps = functools.partial(make_pettingzoo, "pettingzoo.classic.rps_v2:parallel_env")
    serial = vector.make(rps, "serial", num_envs=2, num_workers=2, seed=5)
    env = vector.make(rps, "multiprocessing", num_envs=2, num_workers=2, seed=5)
    try:
        assert env.num_agents == 4 and env.single_action_space.n == 3
        env.reset()
        serial.reset()
        moves = np.random.default_rng(0).integers(0, 3, size=(120, 4))
        finished = 0
        for actions in moves:
            obs, rewards, terminals, truncations, _ = env.step(actions)
            s_obs, s_rewards, s_terminals, s_truncations, _ = serial.step(actions)
            np.testing.assert_array_equal(obs, s_obs)
            np.testing.assert_array_equal(rewards, s_rewards)
            # Zero-sum: the two players of an env always get opposite rewards.
            np.testing.assert_array_equal(rewards[0::2], -rewards[1::2])
            finished += int((terminals | truncations).sum())
        assert finished >= 4  # every agent finished its 100-move game once
        stats = env.log()
        assert stats == serial.log() and stats["episodes"] == finished
        assert env.log() == {}  # reading the statistics clears them
    finally:
        env.close()
        serial.close()
