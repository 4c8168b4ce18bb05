"""The native envs: the binding, NativeVecEnv's contract, CartPole and Breakout rules, shoal.make."""

from __future__ import annotations

import os
import sys
import types
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import shoal
from shoal.core.contract import AsyncVecEnv, Batch, VecEnv
from shoal.envs import _native, registry
from shoal.envs.native import GAMES, GymnasiumView, NativeVecEnv

ALL_GAMES = list(GAMES)
BREAKOUT_POINTS = np.repeat(np.array([7, 7, 4, 4, 1, 1], dtype=np.float32), 18)


def small_options(name: str) -> dict:
    # Snake's default grid holds 256 snakes; a smaller one keeps the generic tests fast.
    if name == "snake":
        return {"width": 40, "height": 30, "num_snakes": 4, "num_food": 16}
    return {}


def random_actions(env: NativeVecEnv, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    nvec = np.atleast_1d(getattr(space, "nvec", getattr(space, "n", None)))
    actions = rng.integers(0, nvec, size=(env.num_agents, len(nvec)))
    return actions.reshape(env.actions.shape).astype(np.int32)


def rollout(env: NativeVecEnv, steps: int, seed: int = 7) -> tuple[list, list, list, list]:
    rng = np.random.default_rng(seed)
    obs, rew, term, trunc = [], [], [], []
    for _ in range(steps):
        o, r, te, tr, _ = env.step(random_actions(env, rng))
        obs.append(o.copy())
        rew.append(r.copy())
        term.append(te.copy())
        trunc.append(tr.copy())
    return obs, rew, term, trunc


def tracker_actions(obs: np.ndarray) -> np.ndarray:
    """Breakout: move the paddle (obs 0) towards the ball (obs 2)."""
    paddle, ball = obs[:, 0], obs[:, 2]
    return np.where(ball > paddle + 0.01, 2, np.where(ball < paddle - 0.01, 1, 0)).astype(np.int32)


# ---- registry and spaces ----


def test_list_envs_and_specs() -> None:
    names = [name for name, _ in shoal.list_envs()]
    assert names[:2] == ["cartpole", "breakout"]
    assert names == ALL_GAMES
    for spec in GAMES.values():
        assert spec.description
        for option in spec.options:
            assert option.min <= option.default <= option.max, (spec.name, option)
            assert option.help


@pytest.mark.parametrize("name", ALL_GAMES)
def test_buffers_and_spaces(name: str) -> None:
    env = shoal.make(name, num_envs=3, **small_options(name))
    n = env.num_agents
    assert n == env.num_envs * env.agents_per_env
    assert env.observations.shape == (n, env.single_observation_space.shape[0])
    assert env.observations.dtype == env.single_observation_space.dtype
    assert env.final_observations.shape == env.observations.shape
    obs, infos = env.reset()
    assert obs is env.observations and isinstance(infos, list)
    result = env.step(random_actions(env, np.random.default_rng(0)))
    again = env.step(random_actions(env, np.random.default_rng(1)))
    # Same array objects every step: the trainer may hold on to them.
    for a, b in zip(result[:4], again[:4], strict=True):
        assert a is b
    o, r, te, tr, info = again
    assert r.dtype == np.float32 and r.shape == (n,)
    assert te.dtype == np.bool_ and tr.dtype == np.bool_ and te.shape == (n,)
    assert isinstance(info, list)
    assert isinstance(env.render(), str) and env.render()
    env.close()
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.step(random_actions(env, np.random.default_rng(0)))


# ---- determinism ----


@pytest.mark.parametrize("name", ALL_GAMES)
def test_same_seed_is_bit_identical_across_thread_counts(name: str) -> None:
    runs = []
    for threads in (1, 2, 1):
        env = shoal.make(name, num_envs=6, seed=123, num_threads=threads, **small_options(name))
        assert env.num_threads == threads
        runs.append(rollout(env, 200))
        env.close()
    for other in runs[1:]:
        for series_a, series_b in zip(runs[0], other, strict=True):
            for a, b in zip(series_a, series_b, strict=True):
                assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["cartpole", "breakout"])
def test_different_seeds_differ_and_reset_seed_restarts(name: str) -> None:
    a = shoal.make(name, num_envs=4, seed=1)
    b = shoal.make(name, num_envs=4, seed=2)
    assert not np.array_equal(a.observations, b.observations)
    # Envs within one vector get different streams too.
    assert not np.array_equal(a.observations[0], a.observations[1])
    first = rollout(a, 50)
    a.reset(seed=1)
    assert np.array_equal(a.observations, shoal.make(name, num_envs=4, seed=1).observations)
    second = rollout(a, 50)
    for x, y in zip(first[0], second[0], strict=True):
        assert np.array_equal(x, y)


# ---- observations inside the declared Box ----


@pytest.mark.parametrize("name", ALL_GAMES)
def test_observations_inside_box(name: str) -> None:
    env = shoal.make(name, num_envs=8, seed=5, **small_options(name))
    space = env.single_observation_space
    rng = np.random.default_rng(3)
    for _ in range(300):
        obs, _, _, trunc, _ = env.step(random_actions(env, rng))
        assert np.all(obs >= space.low) and np.all(obs <= space.high)
        assert np.all(np.isfinite(obs.astype(np.float64)))
        final = env.final_observations[trunc]
        assert np.all(final >= space.low) and np.all(final <= space.high)


def test_breakout_tracker_observations_inside_box() -> None:
    # A good policy reaches the fast speeds, the back wall and the second wall.
    env = shoal.make("breakout", num_envs=16, seed=11)
    obs, _ = env.reset()
    for _ in range(1500):
        obs, *_ = env.step(tracker_actions(obs))
        assert obs.min() >= -1.0 and obs.max() <= 1.0


# ---- episodes, auto-reset, truncation, log ----


def test_cartpole_constant_action_episode_statistics() -> None:
    env = shoal.make("cartpole", num_envs=64, seed=0)
    assert env.log() == {}
    for _ in range(60):
        env.step(np.ones(64, dtype=np.int32))
    log = env.log()
    assert log["episodes"] >= 64 * 3
    assert 7 <= log["episode_length"] <= 14
    assert log["score"] == log["episode_length"] == log["episode_return"]
    assert env.log() == {}  # cleared by the previous call


def test_cartpole_auto_reset_starts_new_episode() -> None:
    env = shoal.make("cartpole", num_envs=32, seed=4)
    seen_terminal = 0
    for _ in range(40):
        obs, rewards, terms, truncs, _ = env.step(np.zeros(32, dtype=np.int32))
        assert np.all(rewards == 1.0)
        assert not truncs.any()
        # The observation after a terminal step is the next episode's start state.
        assert np.all(np.abs(obs[terms]) <= 0.05)
        seen_terminal += int(terms.sum())
    assert seen_terminal > 0


def test_cartpole_truncation_fills_final_observations() -> None:
    short = shoal.make("cartpole", num_envs=16, seed=9, max_steps=5)
    longer = shoal.make("cartpole", num_envs=16, seed=9, max_steps=6)
    actions = np.tile(np.array([0, 1], dtype=np.int32), 8)
    for step in range(5):
        _, _, terms, truncs, _ = short.step(actions)
        longer.step(actions)
        assert not terms.any()
        assert truncs.all() == (step == 4)
    # The truncated episode's last observation is exactly the state the longer episode reached.
    assert np.array_equal(short.final_observations, longer.observations)
    assert np.all(np.abs(short.observations) <= 0.05)
    log = short.log()
    assert log["episodes"] == 16 and log["episode_length"] == 5


def test_breakout_truncation_by_frames() -> None:
    env = shoal.make("breakout", num_envs=4, seed=1, frameskip=4, max_episode_frames=8)
    _, _, _, truncs, _ = env.step(np.zeros(4, dtype=np.int32))
    assert not truncs.any()
    obs, _, terms, truncs, _ = env.step(np.zeros(4, dtype=np.int32))
    assert truncs.all() and not terms.any()
    final = env.final_observations
    assert np.all(final[:, 10:] == 1.0) and np.all(obs[:, 10:] == 1.0)
    assert not np.array_equal(final[:, :6], obs[:, :6])
    assert env.log()["episode_length"] == 2


# ---- Breakout rules ----


def test_breakout_reward_is_row_points_of_removed_bricks() -> None:
    env = shoal.make("breakout", num_envs=32, seed=2)
    obs, _ = env.reset()
    assert np.all(obs[:, 10:] == 1.0)
    gained = 0.0
    for _ in range(2000):
        before = obs[:, 10:].copy()
        obs, rewards, terms, truncs, _ = env.step(tracker_actions(obs))
        removed = (before == 1.0) & (obs[:, 10:] == 0.0)
        refilled = (obs[:, 10:] > before).any(axis=1)
        check = ~(terms | truncs | refilled)
        expected = (removed * BREAKOUT_POINTS).sum(axis=1)
        assert np.array_equal(rewards[check], expected[check])
        assert np.all(rewards >= 0) and np.all(rewards == np.round(rewards))
        gained += float(rewards[check].sum())
    assert gained > 0
    log = env.log()
    assert log["episodes"] > 0 and log["score"] == log["episode_return"]
    assert log["score"] <= 864


def test_breakout_loses_balls_then_terminates() -> None:
    env = shoal.make("breakout", num_envs=8, seed=6, balls=3)
    balls = [env.observations[0, 6]]
    terminated = False
    for _ in range(2000):
        obs, _, terms, _, _ = env.step(np.zeros(8, dtype=np.int32))
        if terms[0]:
            terminated = True
            break
        if obs[0, 6] != balls[-1]:
            balls.append(obs[0, 6])
    assert terminated
    assert np.allclose(balls, [1.0, 2 / 3, 1 / 3])
    assert env.observations[0, 6] == 1.0  # the new episode starts with every ball


def test_breakout_tracker_beats_doing_nothing() -> None:
    scores = {}
    for policy in ("noop", "tracker"):
        env = shoal.make("breakout", num_envs=32, seed=8)
        obs, _ = env.reset()
        for _ in range(1500):
            actions = tracker_actions(obs) if policy == "tracker" else np.zeros(32, dtype=np.int32)
            obs, *_ = env.step(actions)
        scores[policy] = env.log()["score"]
    assert scores["tracker"] > 5 * max(scores["noop"], 1.0)


# ---- the async form ----


def test_send_recv_matches_step() -> None:
    a = shoal.make("breakout", num_envs=4, seed=3)
    b = shoal.make("breakout", num_envs=4, seed=3)
    obs, _ = a.reset()
    first = a.recv()
    assert isinstance(first, Batch) and first.observations is a.observations
    assert np.array_equal(first.agent_ids, np.arange(4)) and first.masks.all()
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = random_actions(a, rng)
        a.send(actions)
        o, r, te, tr, final, infos, ids, masks = a.recv()
        o2, r2, te2, tr2, _ = b.step(actions)
        assert np.array_equal(o, o2) and np.array_equal(r, r2) and np.array_equal(te, te2)
        assert final is a.final_observations and isinstance(infos, list)
    a.send(actions)
    with pytest.raises(RuntimeError, match="recv"):
        a.send(actions)
    a.recv()
    with pytest.raises(RuntimeError, match="send"):
        a.recv()


# ---- bad input ----


def test_bad_actions_raise_clear_errors() -> None:
    env = shoal.make("breakout", num_envs=4)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got \(3,\)"):
        env.step(np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros((4, 2), dtype=np.int32))
    for dtype in (np.float32, np.float64, np.bool_, object):
        with pytest.raises(TypeError, match="integers"):
            env.step(np.zeros(4, dtype=dtype))
    with pytest.raises(TypeError, match="integers"):
        env.step([0.5, 1, 1, 1])
    bad = np.zeros(4, dtype=np.int32)
    bad[2] = 3
    with pytest.raises(ValueError, match=r"agent 2 is 3; expected an integer in \[0, 3\)"):
        env.step(bad)
    bad[2] = -1
    with pytest.raises(ValueError, match=r"agent 2 is -1"):
        env.step(bad)
    # int64 values that would wrap into range when narrowed to int32 are still rejected.
    with pytest.raises(ValueError, match=r"agent 1 is 4294967297"):
        env.step(np.array([0, 2**32 + 1, 0, 0], dtype=np.int64))
    # Wider integer types, lists and a (num_agents, 1) column are accepted.
    env.step(np.array([0, 1, 2, 0], dtype=np.int64))
    env.step([0, 1, 2, 0])
    env.step(np.array([[0], [1], [2], [0]], dtype=np.uint8))
    assert np.array_equal(env.actions, [0, 1, 2, 0])


def test_bad_names_and_options_raise_with_suggestions() -> None:
    with pytest.raises(ValueError, match="did you mean 'breakout'"):
        shoal.make("breakot")
    with pytest.raises(ValueError, match="unknown env 'zzz'"):
        shoal.make("zzz")
    with pytest.raises(ValueError, match="no option 'frame_skip'; did you mean 'frameskip'"):
        shoal.make("breakout", frame_skip=4)
    with pytest.raises(ValueError, match=r"'frameskip' of env 'breakout' must be in \[1, 64\], got 0"):
        shoal.make("breakout", frameskip=0)
    with pytest.raises(ValueError, match="whole number"):
        shoal.make("breakout", frameskip=2.5)
    with pytest.raises(ValueError, match="must be in"):
        shoal.make("cartpole", max_steps=float("nan"))
    with pytest.raises(TypeError, match="must be a number"):
        shoal.make("breakout", frameskip="4")
    with pytest.raises(TypeError, match="must be a number"):
        shoal.make("breakout", frameskip=True)
    with pytest.raises(ValueError, match="expected num_envs >= 1, got 0"):
        shoal.make("cartpole", num_envs=0)
    with pytest.raises(TypeError, match="expected num_envs to be an integer"):
        shoal.make("cartpole", num_envs=2.0)
    with pytest.raises(TypeError, match="expected seed to be an integer"):
        shoal.make("cartpole", seed=1.5)
    with pytest.raises(ValueError, match="num_threads"):
        shoal.make("cartpole", num_threads=-1)
    with pytest.raises(TypeError, match="env name must be a str"):
        shoal.make(3)
    with pytest.raises(ValueError, match="gym:<id>"):
        shoal.make("gym:")
    env = shoal.make("cartpole", max_steps=7)
    assert env.options == {"max_steps": 7}


def test_binding_rejects_bad_buffers_without_crashing() -> None:
    n = 4

    def buffers(**overrides: np.ndarray) -> list:
        bufs = {
            "obs": np.zeros((n, 4), np.float32),
            "final_obs": np.zeros((n, 4), np.float32),
            "actions": np.zeros(n, np.int32),
            "rewards": np.zeros(n, np.float32),
            "terminals": np.zeros(n, np.uint8),
            "truncations": np.zeros(n, np.uint8),
        }
        bufs.update(overrides)
        return list(bufs.values())

    _native.VecEnv("cartpole", n, 0, [500], 1, *buffers()).close()
    with pytest.raises(TypeError, match="'obs' must have dtype float32"):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(obs=np.zeros((n, 4), np.float64)))
    with pytest.raises(ValueError, match="'rewards' must hold 4 elements"):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(rewards=np.zeros(3, np.float32)))
    with pytest.raises(TypeError, match="'actions' must be a writable C-contiguous"):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(actions=np.zeros((n, 2), np.int32)[:, 0]))
    readonly = np.zeros(n, np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(TypeError, match="'terminals'"):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(terminals=readonly))
    with pytest.raises(TypeError, match="'truncations' must have dtype uint8"):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(truncations=np.zeros(n, np.bool_)))
    with pytest.raises(TypeError):
        _native.VecEnv("cartpole", n, 0, [500], 1, *buffers(obs=None))
    with pytest.raises(ValueError, match="takes 1 option values, got 0"):
        _native.VecEnv("cartpole", n, 0, [], 1, *buffers())
    with pytest.raises(ValueError, match=r"must be in \[1, 1e\+06\]|must be in \[1\.0, 1000000\.0\]"):
        _native.VecEnv("cartpole", n, 0, [0], 1, *buffers())
    with pytest.raises(ValueError, match="num_envs"):
        _native.VecEnv("cartpole", 0, 0, [500], 1, *buffers())
    with pytest.raises(ValueError, match="num_threads"):
        _native.VecEnv("cartpole", n, 0, [500], 0, *buffers())
    with pytest.raises(ValueError, match="unknown native env 'nope'"):
        _native.VecEnv("nope", n, 0, [500], 1, *buffers())
    env = _native.VecEnv("cartpole", n, 0, [500], 1, *buffers())
    with pytest.raises(RuntimeError, match="already initialized"):
        env.__init__("cartpole", n, 0, [500], 1, *buffers())
    with pytest.raises(IndexError):
        env.render(n)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step()
    uninitialized = _native.VecEnv.__new__(_native.VecEnv)
    with pytest.raises(RuntimeError, match="not initialized"):
        uninitialized.step()


# ---- Gymnasium view ----


@pytest.mark.parametrize("name", ALL_GAMES)
def test_gymnasium_view_passes_check_env(name: str) -> None:
    probe = shoal.make(name, num_envs=1, **small_options(name))
    if probe.agents_per_env != 1:
        with pytest.raises(ValueError, match="single-agent"):
            GymnasiumView(name, **small_options(name))
        return
    for render_mode in (None, "ansi"):
        env = GymnasiumView(name, render_mode=render_mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env, skip_render_check=False)
        env.close()


def test_gymnasium_view_episode() -> None:
    env = GymnasiumView("cartpole", max_steps=20)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and info == {}
    total, truncated = 0.0, False
    for _ in range(20):
        obs, reward, terminated, truncated, _ = env.step(1 if obs[2] > 0 else 0)
        total += reward
        if terminated or truncated:
            break
    assert truncated and total == 20.0
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(5)


# ---- shoal.make routing ----


def test_make_routes_prefixed_names_to_emulation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("shoal.emulation")
    fake.make_gymnasium = lambda env_id, num_envs, seed, **kw: calls.append(
        ("gym", env_id, num_envs, seed, kw)
    )
    fake.make_pettingzoo = lambda spec, num_envs, seed, **kw: calls.append(("pz", spec, num_envs, seed, kw))
    monkeypatch.setitem(sys.modules, "shoal.emulation", fake)
    monkeypatch.setattr(shoal, "emulation", fake, raising=False)
    shoal.make("gym:CartPole-v1", num_envs=3, seed=5, max_episode_steps=10)
    shoal.make("pettingzoo:butterfly.pistonball_v6", num_envs=2, seed=1)
    assert calls == [
        ("gym", "CartPole-v1", 3, 5, {"max_episode_steps": 10}),
        ("pz", "butterfly.pistonball_v6", 2, 1, {}),
    ]


def test_make_default_threads_and_repr() -> None:
    env = shoal.make("cartpole", num_envs=3, num_threads=0)
    assert 1 <= env.num_threads <= 3
    env = shoal.make("cartpole", num_envs=2, num_threads=8)
    assert env.num_threads == 2  # never more threads than envs
    assert "cartpole" in repr(env)
    with shoal.make("breakout", num_envs=2) as ctx:
        assert isinstance(ctx, NativeVecEnv)
        assert isinstance(ctx, VecEnv) and isinstance(ctx, AsyncVecEnv)
    assert ctx.closed


def test_the_package_root_reexports_the_registry() -> None:
    assert shoal.make is registry.make and shoal.list_envs is registry.list_envs
    assert [name for name, _ in shoal.list_envs()] == ALL_GAMES
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        shoal.nope  # noqa: B018


def test_threaded_env_keeps_working_in_a_forked_child() -> None:
    env = shoal.make("breakout", num_envs=8, seed=2, num_threads=2)
    reference = shoal.make("breakout", num_envs=8, seed=2, num_threads=1)
    actions = np.ones(8, dtype=np.int32)
    pid = os.fork()
    if pid == 0:  # the child has no worker threads; stepping must still work and match
        code = 1
        try:
            for _ in range(20):
                obs, *_ = env.step(actions)
                expected, *_ = reference.step(actions)
            code = 0 if np.array_equal(obs, expected) else 2
            env.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    env.step(actions)  # the parent's pool is untouched


def play_breakout_well(env: NativeVecEnv, steps: int, until_terminal: bool) -> dict:
    """A wide, fast paddle that tracks the ball with a varying aim (so the angles vary)."""
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    aim = np.zeros(env.num_envs)
    seen = {"widths": set(), "levels": set(), "walls": set()}
    for step in range(steps):
        if step % 50 == 0:
            aim = rng.uniform(-0.08, 0.08, env.num_envs)
        target = obs[:, 2] + aim
        actions = np.where(target > obs[:, 0] + 0.005, 2, np.where(target < obs[:, 0] - 0.005, 1, 0))
        obs, _, terms, _, _ = env.step(actions.astype(np.int32))
        seen["widths"].update(np.round(obs[:, 1] * 144).tolist())
        seen["levels"].update(np.round(obs[:, 9] * 4).tolist())
        seen["walls"].update(obs[:, 8].tolist())
        if until_terminal and terms.any():
            break
    return seen


def test_breakout_speedups_and_paddle_shrink() -> None:
    env = shoal.make("breakout", num_envs=16, seed=1, paddle_width=64, paddle_speed=16, frameskip=1)
    seen = play_breakout_well(env, 4000, until_terminal=False)
    assert seen["widths"] == {64.0, 32.0}  # halved once the ball reached the back wall
    assert seen["levels"] == {0.0, 1.0, 2.0, 3.0, 4.0}  # 4 hits, 12 hits, orange row, red row


def test_breakout_two_walls_then_max_score_ends_the_game() -> None:
    env = shoal.make(
        "breakout", num_envs=16, seed=1, paddle_width=64, paddle_speed=16, frameskip=1, shrink_paddle=0
    )
    seen = play_breakout_well(env, 20000, until_terminal=True)
    assert seen["walls"] == {0.0, 1.0}
    log = env.log()
    assert log == {
        "score": 864.0,
        "episode_return": 864.0,
        "episode_length": log["episode_length"],
        "episodes": 1,
    }


def test_breakout_ball_width_widens_the_paddle_catch() -> None:
    # A paddle that never moves returns only the balls that land on it; counting the ball's
    # width, a 32-pixel ball lands "on" a 4-pixel paddle over a window 9 times as wide as a point.
    catches = {}
    for width in (0, 32):
        env = shoal.make("breakout", num_envs=64, seed=3, paddle_width=4, ball_width=width, frameskip=1)
        obs, _ = env.reset()
        noop = np.zeros(64, dtype=np.int32)
        count = 0
        for _ in range(3000):
            falling = obs[:, 5] > 0
            obs, *_ = env.step(noop)
            # The ball turned upward low in the playfield (bricks are above y = 0.42): a catch.
            count += int(np.sum(falling & (obs[:, 5] < 0) & (obs[:, 3] > 0.8)))
        catches[width] = count
        env.close()
    assert catches[0] > 0
    assert catches[32] > 4 * catches[0]
