"""Rules of the native games pong, snake, bandit and memory, checked through shoal.make."""

from __future__ import annotations

import numpy as np
import pytest

import shoal

# Snake observation codes (snake.h).
EMPTY, WALL, FOOD, OWN, OTHER = 0, 1, 2, 3, 4
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = {UP: (0, -1), DOWN: (0, 1), LEFT: (-1, 0), RIGHT: (1, 0)}

# Pong constants mirrored from pong.h, to check the bounce rule from observations.
PONG_REACH = 0.1 + 0.01  # half the default paddle height + the ball radius
PONG_SPEEDUP = 1.05
PONG_MAX_VX, PONG_SERVE_VX = 0.04, 0.015


def _rollout(env, policy, steps: int):
    """Yield (obs_before, actions, obs_after, rewards, terminals, truncations), all copies."""
    obs, _ = env.reset()
    for _ in range(steps):
        before = obs.copy()
        actions = policy(before)
        obs, rewards, terminals, truncations, _ = env.step(actions)
        yield before, actions, obs.copy(), rewards.copy(), terminals.copy(), truncations.copy()


# ---------------------------------------------------------------- pong


def test_pong_spaces_and_bounds() -> None:
    env = shoal.make("pong", num_envs=4, seed=0)
    assert env.single_observation_space.shape == (8,)
    assert env.single_observation_space.dtype == np.float32
    assert env.single_action_space.n == 3
    rng = np.random.default_rng(0)
    for _, _, obs, rewards, _, _ in _rollout(env, lambda o: rng.integers(0, 3, len(o)), 300):
        assert np.all(np.abs(obs) <= 1.0)
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
    assert "agent" in env.render()
    env.close()


def test_pong_scoring_and_terminal_at_21() -> None:
    n = 64
    env = shoal.make("pong", num_envs=n, seed=1)
    rng = np.random.default_rng(1)
    won = np.zeros(n, dtype=int)
    lost = np.zeros(n, dtype=int)
    finished_scores, finished_returns = [], []
    for _, _, obs, rewards, terminals, truncations in _rollout(env, lambda o: rng.integers(0, 3, n), 700):
        assert not truncations.any()
        won += rewards > 0
        lost += rewards < 0
        for i in np.flatnonzero(terminals):
            assert max(won[i], lost[i]) == 21 and min(won[i], lost[i]) < 21
            finished_scores.append(won[i])
            finished_returns.append(won[i] - lost[i])
            # The new episode starts from 0 : 0.
            assert obs[i, 6] == 0.0 and obs[i, 7] == 0.0
        won[terminals] = 0
        lost[terminals] = 0
        live = ~terminals
        np.testing.assert_allclose(obs[live, 6] * 21, won[live], atol=1e-4)
        np.testing.assert_allclose(obs[live, 7] * 21, lost[live], atol=1e-4)
    assert len(finished_scores) > 20
    log = env.log()
    assert log["episodes"] == len(finished_scores)
    assert log["score"] == pytest.approx(np.mean(finished_scores))
    assert log["episode_return"] == pytest.approx(np.mean(finished_returns))
    env.close()


def test_pong_points_to_win_option() -> None:
    env = shoal.make("pong", num_envs=16, seed=2, points_to_win=3)
    points = np.zeros(16, dtype=int)
    ended = 0
    for _, _, _, rewards, terminals, _ in _rollout(env, lambda o: np.zeros(16, dtype=np.int32), 300):
        points += rewards != 0
        assert np.all(points[terminals] >= 3) and np.all(points[terminals] <= 5)
        ended += int(terminals.sum())
        points[terminals] = 0
    assert ended > 0
    env.close()


def test_pong_bounce_angle_depends_on_hit_position() -> None:
    # frameskip=1 and a still paddle, so the observation right after a hit shows the tick
    # that set the new velocity.
    env = shoal.make("pong", num_envs=64, seed=3, frameskip=1)
    still = np.zeros(64, dtype=np.int32)
    agent_hits = opponent_hits = 0
    vys = []
    for before, _, obs, rewards, _, _ in _rollout(env, lambda o: still, 2500):
        quiet = rewards == 0
        for i in np.flatnonzero(quiet & (before[:, 4] > 0) & (obs[:, 4] < 0)):
            offset = (obs[i, 3] - obs[i, 0]) / 2 / PONG_REACH  # from the agent's paddle centre
            assert obs[i, 5] == pytest.approx(np.clip(offset, -1, 1), abs=1e-4)
            expected_vx = min(before[i, 4] * PONG_MAX_VX * PONG_SPEEDUP, PONG_MAX_VX) / PONG_MAX_VX
            assert -obs[i, 4] == pytest.approx(expected_vx, abs=1e-4)
            vys.append(obs[i, 5])
            agent_hits += 1
        for i in np.flatnonzero(quiet & (before[:, 4] < 0) & (obs[:, 4] > 0)):
            offset = (obs[i, 3] - obs[i, 1]) / 2 / PONG_REACH
            assert obs[i, 5] == pytest.approx(np.clip(offset, -1, 1), abs=1e-4)
            opponent_hits += 1
    assert agent_hits > 20 and opponent_hits > 20
    assert np.std(vys) > 0.1
    env.close()


def test_pong_tracking_the_ball_beats_random_play() -> None:
    n = 32

    def tracker(obs: np.ndarray) -> np.ndarray:
        gap = obs[:, 3] - obs[:, 0]
        return np.where(gap < -0.04, 1, np.where(gap > 0.04, 2, 0)).astype(np.int32)

    rng = np.random.default_rng(4)
    fractions = {}
    for name, policy in (("tracker", tracker), ("random", lambda o: rng.integers(0, 3, n))):
        env = shoal.make("pong", num_envs=n, seed=4)
        won = lost = 0
        for _, _, _, rewards, _, _ in _rollout(env, policy, 1500):
            won += int((rewards > 0).sum())
            lost += int((rewards < 0).sum())
        fractions[name] = won / (won + lost)
        env.close()
    assert fractions["tracker"] > 0.5
    assert fractions["random"] < 0.2


def test_pong_truncation_keeps_final_observation() -> None:
    env = shoal.make("pong", num_envs=8, seed=5, max_steps=50)
    noop = np.zeros(8, dtype=np.int32)
    for t, (_, _, obs, _, terminals, truncations) in enumerate(_rollout(env, lambda o: noop, 100)):
        assert not terminals.any()
        assert truncations.all() == (t in (49, 99))
        if truncations.all():
            # The new episode's paddles start centred; the final observation is the old state.
            assert np.all(obs[:, 0] == 0.0) and np.all(obs[:, 6:] == 0.0)
            assert not np.array_equal(env.final_observations, obs)
            assert np.all(np.abs(env.final_observations) <= 1.0)
    assert env.log()["episodes"] == 16
    env.close()


# ---------------------------------------------------------------- snake


def _views(obs: np.ndarray) -> np.ndarray:
    window = int(round(np.sqrt(obs.shape[1])))
    return obs.reshape(len(obs), window, window)


def _head_positions(obs: np.ndarray, vision: int) -> np.ndarray:
    """Absolute (x, y) of each head, from where the wall margin sits in a whole-grid view."""
    inside = _views(obs) != WALL
    x0 = inside.any(axis=1).argmax(axis=1)
    y0 = inside.any(axis=2).argmax(axis=1)
    return np.stack([vision - x0, vision - y0], axis=1)


def _cautious(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step onto food if next to it, else onto an empty cell, else anywhere."""
    view = _views(obs)
    c = view.shape[1] // 2
    around = np.stack([view[:, c - 1, c], view[:, c + 1, c], view[:, c, c - 1], view[:, c, c + 1]], axis=1)
    preference = 2.0 * (around == FOOD) + 1.0 * (around == EMPTY) + 0.5 * rng.random(around.shape)
    return preference.argmax(axis=1).astype(np.int32)


def test_snake_multi_agent_buffer_shapes() -> None:
    env = shoal.make("snake", num_envs=2, seed=0)
    assert env.agents_per_env == 256 and env.num_agents == 512
    assert env.observations.shape == (512, 121) and env.observations.dtype == np.uint8
    env.close()

    env = shoal.make("snake", num_envs=3, seed=0, width=40, height=30, num_snakes=5, num_food=20, vision=2)
    assert env.num_agents == 15 and env.single_observation_space.shape == (25,)
    assert env.single_action_space.n == 4
    obs, _ = env.reset()
    assert obs.shape == (15, 25)
    obs, rewards, terminals, truncations, _ = env.step(np.zeros(15, dtype=np.int32))
    assert rewards.shape == terminals.shape == truncations.shape == (15,)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, dtype=np.int32))
    assert "snake 0" in env.render()
    env.close()


def test_snake_rejects_a_grid_too_small_for_its_contents() -> None:
    with pytest.raises(ValueError, match="num_snakes"):
        shoal.make("snake", width=8, height=8, num_snakes=60, num_food=10)


def test_snake_opposite_action_is_ignored() -> None:
    n, vision = 64, 15
    env = shoal.make("snake", num_envs=n, seed=3, width=16, height=16, num_snakes=1, num_food=0,
                     vision=vision)
    obs, _ = env.reset()
    positions = [_head_positions(obs, vision)]
    alive = np.ones(n, dtype=bool)
    for action in (RIGHT, LEFT, UP):
        obs, _, terminals, _, _ = env.step(np.full(n, action, dtype=np.int32))
        alive &= ~terminals
        positions.append(_head_positions(obs, vision))
    moves = np.diff(np.stack(positions), axis=0)  # [step, env, xy]
    assert alive.sum() > n // 2
    first = moves[0, alive]
    # RIGHT moves right, unless the snake was heading left (RIGHT is then ignored).
    assert np.all((first == MOVES[RIGHT]).all(axis=1) | (first == MOVES[LEFT]).all(axis=1))
    assert (first == MOVES[LEFT]).all(axis=1).any() and (first == MOVES[RIGHT]).all(axis=1).any()
    # Now heading right or left, LEFT is either ignored (heading right) or already the heading.
    np.testing.assert_array_equal(moves[1, alive], first)
    # UP is perpendicular to both, so it turns.
    assert np.all(moves[2, alive] == MOVES[UP])
    env.close()


def test_snake_food_growth_and_max_length() -> None:
    n_envs, snakes, num_food, max_length = 8, 3, 40, 6
    env = shoal.make("snake", num_envs=n_envs, seed=5, width=16, height=16, num_snakes=snakes,
                     num_food=num_food, vision=15, max_length=max_length, food_reward=0.25)
    rng = np.random.default_rng(5)
    ate = ate_at_full_length = deaths = 0
    for before, _, obs, rewards, terminals, _ in _rollout(env, lambda o: _cautious(o, rng), 300):
        old_len = (before == OWN).sum(axis=1)
        new_len = (obs == OWN).sum(axis=1)
        # Every agent of an env sees the whole grid, so all count the same food: topped up.
        assert np.all((obs == FOOD).sum(axis=1) == num_food)
        assert np.all(_views(obs)[:, 15, 15] == OWN)
        assert np.all(new_len <= max_length)
        for i in range(len(obs)):
            if terminals[i]:
                assert rewards[i] == -1.0 and new_len[i] == 1
                deaths += 1
            elif rewards[i] == pytest.approx(0.25):
                assert new_len[i] == min(old_len[i] + 1, max_length)
                ate += 1
                ate_at_full_length += old_len[i] == max_length
            else:
                assert rewards[i] == 0.0 and new_len[i] == old_len[i]
    assert ate > 50 and ate_at_full_length > 0 and deaths > 0
    log = env.log()
    assert log["episodes"] == deaths
    assert 1.0 <= log["score"] <= max_length
    env.close()


def test_snake_dies_at_the_wall_and_respawns() -> None:
    n, vision = 16, 15
    env = shoal.make("snake", num_envs=n, seed=6, width=16, height=16, num_snakes=1, num_food=0,
                     vision=vision)
    up = np.full(n, UP, dtype=np.int32)
    died_at = np.full(n, -1)
    for t, (before, _, obs, rewards, terminals, _) in enumerate(_rollout(env, lambda o: up, 16)):
        for i in np.flatnonzero(terminals & (died_at < 0)):
            died_at[i] = t
            # Straight into a wall: the cell ahead (up, or down when up was ignored) was wall.
            view = _views(before[i : i + 1])[0]
            assert WALL in (view[vision - 1, vision], view[vision + 1, vision])
            assert rewards[i] == -1.0
            assert _views(obs[i : i + 1])[0][vision, vision] == OWN
        assert np.all(rewards[~terminals] == 0.0)
    assert np.all(died_at >= 0)  # a snake going straight meets a wall within 16 steps
    log = env.log()
    assert log["episodes"] >= n and log["score"] == 1.0
    env.close()


def test_snake_kills_on_bodies_and_logs_length() -> None:
    # Crowded grid: most deaths are into bodies. The logged score is the length at death.
    env = shoal.make("snake", num_envs=4, seed=7, width=12, height=12, num_snakes=12, num_food=30,
                     vision=11, max_length=20)
    rng = np.random.default_rng(7)
    lengths_at_death = []
    body_deaths = 0
    for before, actions, _, _, terminals, _ in _rollout(env, lambda o: rng.integers(0, 4, len(o)), 200):
        views = _views(before)
        for i in np.flatnonzero(terminals):
            lengths_at_death.append(int((before[i] == OWN).sum()))
            dx, dy = MOVES[int(actions[i])]
            body_deaths += views[i, 11 + dy, 11 + dx] in (OWN, OTHER)
    assert body_deaths > 0
    log = env.log()
    assert log["episodes"] == len(lengths_at_death)
    # Food never kills, so a snake dies at the length it had before its last move.
    assert log["score"] == pytest.approx(np.mean(lengths_at_death))
    env.close()


def test_snake_crowded_grid_always_respawns() -> None:
    # The grid starts full (60 snakes + 4 food on 64 cells). Dead snakes free at least one
    # cell each, so every respawn finds room and no snake is ever left out.
    env = shoal.make("snake", num_envs=2, seed=8, width=8, height=8, num_snakes=60, num_food=4,
                     max_length=64, vision=2)
    rng = np.random.default_rng(8)
    deaths = 0
    for _, _, obs, _, terminals, _ in _rollout(env, lambda o: rng.integers(0, 4, 120), 300):
        assert np.all(obs[:, 12] == OWN)
        deaths += int(terminals.sum())
    assert deaths > 1000
    env.close()


def test_snake_truncation_after_max_steps() -> None:
    n_envs, snakes = 4, 4
    # vision 11 on a 12x12 grid: every view holds the whole grid, so lengths can be counted.
    env = shoal.make("snake", num_envs=n_envs, seed=9, width=12, height=12, num_snakes=snakes,
                     num_food=15, vision=11, max_steps=20)
    rng = np.random.default_rng(9)
    age = np.zeros(n_envs * snakes, dtype=int)
    truncated = 0
    for before, _, obs, _, terminals, truncations in _rollout(env, lambda o: _cautious(o, rng), 120):
        age += 1
        assert not (terminals & truncations).any()
        np.testing.assert_array_equal(truncations, (age == 20) & ~terminals)
        for i in np.flatnonzero(truncations):
            final = env.final_observations[i]
            length_before = (before[i] == OWN).sum()
            assert _views(final[None])[0, 11, 11] == OWN
            assert length_before <= (final == OWN).sum() <= length_before + 1
            assert (obs[i] == OWN).sum() == 1  # respawned, length 1
        truncated += int(truncations.sum())
        age[terminals | truncations] = 0
    assert truncated > 0
    env.close()


# ---------------------------------------------------------------- bandit


def test_bandit_pays_only_the_best_arm() -> None:
    env = shoal.make("bandit", num_envs=8, seed=0, obs_size=3)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, np.ones((8, 3), dtype=np.float32))
    for arm in range(4):
        obs, rewards, terminals, truncations, _ = env.step(np.full(8, arm, dtype=np.int32))
        np.testing.assert_array_equal(rewards, np.full(8, float(arm == 1), dtype=np.float32))
        assert terminals.all() and not truncations.any()
        np.testing.assert_array_equal(obs, np.ones((8, 3), dtype=np.float32))
    log = env.log()
    assert log["episodes"] == 32 and log["score"] == pytest.approx(0.25) and log["episode_length"] == 1.0
    env.close()


def test_bandit_random_best_arm_per_env_and_noise() -> None:
    n, arms = 400, 5
    env = shoal.make("bandit", num_envs=n, seed=1, num_arms=arms, best_arm=-1, noise=0.5)
    env.reset()
    means = np.zeros((arms, n))
    for arm in range(arms):
        for _ in range(40):
            _, rewards, _, _, _ = env.step(np.full(n, arm, dtype=np.int32))
            means[arm] += rewards / 40
    best = means.argmax(axis=0)
    counts = np.bincount(best, minlength=arms)
    assert np.all(counts > n / arms / 2)  # every arm is somebody's best
    assert means.max(axis=0).mean() == pytest.approx(1.0, abs=0.05)
    env.log()
    # The noise-free score says whether the best arm was pulled.
    env.step(best.astype(np.int32))
    assert env.log()["score"] == 1.0
    env.close()
    with pytest.raises(ValueError, match="best_arm"):
        shoal.make("bandit", num_arms=3, best_arm=3)


# ---------------------------------------------------------------- memory


def _remembering_policy(k: int, n: int):
    seen = np.zeros(n, dtype=np.int32)

    def policy(obs: np.ndarray) -> np.ndarray:
        cue_shown = obs[:, :k].any(axis=1)
        seen[cue_shown] = obs[cue_shown, :k].argmax(axis=1)
        return seen.copy()

    return policy


@pytest.mark.parametrize("k,length", [(4, 8), (3, 1), (6, 0)])
def test_memory_remembering_the_cue_scores_one(k: int, length: int) -> None:
    n = 64
    env = shoal.make("memory", num_envs=n, seed=k, num_symbols=k, length=length)
    assert env.single_observation_space.shape == (k + 1,) and env.single_action_space.n == k
    rollout = _rollout(env, _remembering_policy(k, n), 10 * (length + 1))
    for t, (before, _, _, rewards, terminals, _) in enumerate(rollout):
        phase = t % (length + 1)
        assert terminals.all() == (phase == length) and terminals.any() == (phase == length)
        # Cue only on the first step, flag only on the last.
        assert np.all(before[:, :k].sum(axis=1) == float(phase == 0))
        assert np.all(before[:, k] == float(phase == length))
        assert np.all(rewards == float(phase == length))
    log = env.log()
    assert log["episodes"] == 10 * n and log["score"] == 1.0 and log["episode_length"] == length + 1
    env.close()


def test_memory_memoryless_policies_get_one_in_k() -> None:
    n, k, length = 256, 4, 8
    env = shoal.make("memory", num_envs=n, seed=11, num_symbols=k, length=length)
    flagged = []
    constant = np.zeros(n, dtype=np.int32)
    for before, _, _, _, terminals, _ in _rollout(env, lambda o: constant, 50 * (length + 1)):
        if terminals.all():
            flagged.append(before)
    # The answer step looks the same whatever the cue, so no memoryless policy beats 1/k.
    answer_obs = np.concatenate(flagged)
    flag_only = np.eye(k + 1, dtype=np.float32)[k]
    np.testing.assert_array_equal(answer_obs, np.tile(flag_only, (len(answer_obs), 1)))
    log = env.log()
    assert log["episodes"] == 50 * n
    assert log["score"] == pytest.approx(1 / k, abs=0.03)
    env.close()


def test_memory_wrong_answers_can_cost() -> None:
    env = shoal.make("memory", num_envs=128, seed=12, num_symbols=2, length=2, wrong_reward=-1.0)
    returns = []
    for _, _, _, rewards, terminals, _ in _rollout(env, lambda o: np.ones(128, dtype=np.int32), 30):
        if terminals.any():
            returns.extend(rewards[terminals].tolist())
    assert set(returns) == {-1.0, 1.0}
    log = env.log()
    assert log["episode_return"] == pytest.approx(2 * log["score"] - 1)
    env.close()


# ---------------------------------------------------------------- all four


GAME_CASES = [
    ("pong", {}),
    ("snake", {"width": 48, "height": 32, "num_snakes": 6, "num_food": 40}),
    ("bandit", {"best_arm": -1, "noise": 0.3}),
    ("memory", {"length": 3}),
]


def _trajectory(name: str, options: dict, seed: int, threads: int) -> list[np.ndarray]:
    env = shoal.make(name, num_envs=7, seed=seed, num_threads=threads, **options)
    rng = np.random.default_rng(0)
    n_actions = env.single_action_space.n
    out = [env.reset()[0].copy()]
    for _ in range(60):
        obs, rewards, terminals, truncations, _ = env.step(rng.integers(0, n_actions, env.num_agents))
        out += [obs.copy(), rewards.copy(), terminals.copy(), truncations.copy()]
    env.close()
    return out


@pytest.mark.parametrize("name,options", GAME_CASES)
def test_games_are_deterministic_across_thread_counts(name: str, options: dict) -> None:
    reference = _trajectory(name, options, seed=3, threads=1)
    for threads in (2, 3):
        for a, b in zip(reference, _trajectory(name, options, seed=3, threads=threads), strict=True):
            np.testing.assert_array_equal(a, b)
    other_seed = _trajectory(name, options, seed=4, threads=1)
    assert any(not np.array_equal(a, b) for a, b in zip(reference, other_seed, strict=True))


@pytest.mark.parametrize("name,options", GAME_CASES)
def test_games_render_and_stay_in_their_observation_bounds(name: str, options: dict) -> None:
    env = shoal.make(name, num_envs=3, seed=0, **options)
    space = env.single_observation_space
    rng = np.random.default_rng(1)
    n_actions = env.single_action_space.n
    for _, _, obs, _, _, _ in _rollout(env, lambda o: rng.integers(0, n_actions, len(o)), 100):
        assert obs.dtype == space.dtype
        assert np.all(obs >= space.low) and np.all(obs <= space.high)
    text = env.render()
    assert isinstance(text, str) and text.strip()
    env.close()
