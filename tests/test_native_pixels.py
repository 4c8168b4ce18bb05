"""Pixel observations of the native games (obs="pixels"), drawn in C from the game state, and
their RGB frames (render_rgb) in `shoal eval --gif`."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest
import torch

import shoal
from shoal import vector
from shoal.core.config import PolicyConfig
from shoal.emulation import structured_observation_space
from shoal.policy import make_policy
from shoal.render import GifWriter

PIXEL_GAMES = ("breakout", "pong")
# Gray levels of the objects (breakout.h, pong.h).
BREAKOUT_PADDLE, BREAKOUT_BALL = 230, 255
PONG_AGENT, PONG_BALL = 210, 255
# Breakout's picture spans x in [-8, 152) and y in [-8, 202) game pixels; pong's court spans
# x in [0, 1) and y in [-0.04, 1.04).
BREAKOUT_VIEW = (-8.0, -8.0, 160.0, 210.0)
PONG_VIEW = (0.0, -0.04, 1.0, 1.08)


def pixel_env(name: str, **options) -> shoal.envs.native.NativeVecEnv:
    return shoal.make(name, num_envs=4, seed=7, obs="pixels", **options)


@contextlib.contextmanager
def twins(name: str, num_envs: int, seed: int, **pixel_options) -> Iterator[tuple]:
    """Two envs with the same seed, one per observation mode: given the same actions, they play
    the same games."""
    vec = shoal.make(name, num_envs=num_envs, seed=seed)
    pix = shoal.make(name, num_envs=num_envs, seed=seed, obs="pixels", **pixel_options)
    try:
        yield vec, pix
    finally:
        vec.close()
        pix.close()


def frames(env) -> np.ndarray:
    """The observations as (num_envs, frame_stack, side, side)."""
    stack, side, _ = env.structured_observation_space.shape
    return env.observations.reshape(env.num_envs, stack, side, side)


def to_frame(value: float, origin: float, extent: float, side: int) -> float:
    """A game coordinate in frame pixels (pixel i covers [i, i + 1))."""
    return (value - origin) / extent * side


def centre_of(frame: np.ndarray, level: int) -> tuple[float, float]:
    rows, cols = np.nonzero(frame == level)
    assert rows.size, f"no pixel of gray level {level} in the frame"
    return float(rows.mean()) + 0.5, float(cols.mean()) + 0.5


def random_actions(env, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 3, env.num_agents).astype(np.int32) for _ in range(steps)]


# ---- shapes, spaces and options ----


@pytest.mark.parametrize("name", PIXEL_GAMES)
def test_pixel_observations_are_uint8_frame_stacks(name):
    env = pixel_env(name, frame_size=48, frame_stack=3)
    try:
        assert env.single_observation_space == gymnasium.spaces.Box(0, 255, (3 * 48 * 48,), np.uint8)
        assert env.structured_observation_space == gymnasium.spaces.Box(0, 255, (3, 48, 48), np.uint8)
        assert structured_observation_space(env) == env.structured_observation_space
        assert env.observations.dtype == np.uint8 and env.observations.shape == (4, 3 * 48 * 48)
        assert env.options["obs"] == "pixels" and env.options["frame_size"] == 48
        for actions in random_actions(env, 20):
            obs, *_ = env.step(actions)
            # Background, and more than one object level, in every frame.
            assert obs.min() == 0 and len(np.unique(obs[0])) > 2
    finally:
        env.close()


def test_defaults_are_84_pixels_and_4_frames():
    env = shoal.make("breakout", num_envs=2, obs="pixels")
    try:
        assert env.structured_observation_space.shape == (4, 84, 84)
    finally:
        env.close()


def test_vector_mode_has_no_image_structure():
    env = shoal.make("breakout", num_envs=2)
    try:
        assert env.structured_observation_space is None
        assert structured_observation_space(env) == env.single_observation_space
        assert env.options["obs"] == "vector"
    finally:
        env.close()


def test_bad_option_values_have_clear_errors():
    expected = "env 'breakout' option obs must be one of 'vector', 'pixels', got 'pixel'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        shoal.make("breakout", obs="pixel")
    with pytest.raises(ValueError, match=r"must be one of 'vector', 'pixels', got 1"):
        shoal.make("pong", obs=1)
    with pytest.raises(ValueError, match=r"frame_size.*must be in \[36, 256\], got 20"):
        shoal.make("breakout", obs="pixels", frame_size=20)
    with pytest.raises(ValueError, match=r"frame_stack.*must be in \[1, 8\], got 9"):
        shoal.make("pong", obs="pixels", frame_stack=9)
    with pytest.raises(ValueError, match="frame_stack.*whole number"):
        shoal.make("pong", obs="pixels", frame_stack=2.5)
    with pytest.raises(ValueError, match=r"frame_size apply only to pixel observations; add obs='pixels'"):
        shoal.make("breakout", frame_size=64)
    with pytest.raises(ValueError, match="has no option 'obs'"):
        shoal.make("cartpole", obs="pixels")


# ---- the frames show the game state ----


def test_breakout_frame_shows_the_paddle_and_ball_where_the_vector_says():
    with twins("breakout", num_envs=4, seed=3, frame_size=128, frame_stack=2) as (vec, pix):
        side = 128
        x0, y0, width, height = BREAKOUT_VIEW
        for step, actions in enumerate(random_actions(vec, 60, seed=1)):
            vec.step(actions)
            pix.step(actions)
            if step % 5:
                continue
            for i in range(vec.num_envs):
                state = vec.observations[i]
                frame = frames(pix)[i, -1]
                paddle_row, paddle_col = centre_of(frame, BREAKOUT_PADDLE)
                assert paddle_col == pytest.approx(to_frame(state[0] * 144, x0, width, side), abs=1.0)
                assert paddle_row == pytest.approx(to_frame(188.0, y0, height, side), abs=1.0)
                ball_row, ball_col = centre_of(frame, BREAKOUT_BALL)
                assert ball_col == pytest.approx(to_frame(state[2] * 144, x0, width, side), abs=1.5)
                assert ball_row == pytest.approx(to_frame(state[3] * 200, y0, height, side), abs=1.5)


def test_breakout_frame_loses_the_bricks_the_vector_loses():
    with twins("breakout", num_envs=8, seed=5, frame_size=160, frame_stack=1) as (vec, pix):
        for actions in random_actions(vec, 300, seed=2):
            vec.step(actions)
            pix.step(actions)
        bricks = vec.observations[:, 10:].reshape(8, 6, 18)
        assert 0 < bricks.sum() < bricks.size  # some bricks fell, some stand
        x0, y0, width, height = BREAKOUT_VIEW
        for i in range(8):
            frame = frames(pix)[i, -1]
            for row in range(6):
                for col in range(18):
                    # The pixel at the brick's centre (the ball may cover it: skip that level).
                    r = int(to_frame(48 + 6 * row + 3, y0, height, 160))
                    c = int(to_frame(8 * col + 4, x0, width, 160))
                    if frame[r, c] == BREAKOUT_BALL:
                        continue
                    assert (frame[r, c] != 0) == bool(bricks[i, row, col]), (i, row, col)


def test_pong_frame_shows_the_paddle_and_ball_where_the_vector_says():
    with twins("pong", num_envs=4, seed=11, frame_size=96, frame_stack=1) as (vec, pix):
        x0, y0, width, height = PONG_VIEW
        for actions in random_actions(vec, 40, seed=4):
            vec.step(actions)
            pix.step(actions)
            for i in range(vec.num_envs):
                state = (vec.observations[i] + 1) / 2  # positions back to [0, 1]
                frame = frames(pix)[i, -1]
                paddle_row, _ = centre_of(frame, PONG_AGENT)
                assert paddle_row == pytest.approx(to_frame(state[0], y0, height, 96), abs=1.0)
                ball_row, ball_col = centre_of(frame, PONG_BALL)
                assert ball_col == pytest.approx(to_frame(state[2], x0, width, 96), abs=1.0)
                assert ball_row == pytest.approx(to_frame(state[3], y0, height, 96), abs=1.0)


# ---- the frame stack ----


@pytest.mark.parametrize("name", PIXEL_GAMES)
def test_the_stack_shifts_one_frame_per_step_and_refills_on_reset(name):
    env = pixel_env(name, frame_size=40, frame_stack=4)
    try:
        first = frames(env).copy()
        # After a reset every slot holds the first frame.
        assert all(np.array_equal(first[:, k], first[:, -1]) for k in range(4))
        for actions in random_actions(env, 30):
            before = frames(env).copy()
            env.step(actions)
            after = frames(env)
            for i in range(env.num_envs):
                if env.terminals[i] or env.truncations[i]:
                    continue
                assert np.array_equal(after[i, :-1], before[i, 1:])
        assert not np.array_equal(frames(env)[:, -1], frames(env)[:, 0])  # things moved
        env.reset(seed=1)
        refilled = frames(env)
        assert all(np.array_equal(refilled[:, k], refilled[:, -1]) for k in range(4))
    finally:
        env.close()


def test_a_finished_episode_starts_with_a_full_stack_of_its_first_frame():
    env = shoal.make("pong", num_envs=4, seed=0, obs="pixels", frame_size=36, frame_stack=3, points_to_win=1)
    try:
        ended = 0
        for actions in random_actions(env, 400):
            env.step(actions)
            for i in np.nonzero(env.terminals)[0]:
                stack = frames(env)[i]
                assert np.array_equal(stack[0], stack[2]) and np.array_equal(stack[1], stack[2])
                ended += 1
        assert ended > 0
    finally:
        env.close()


def test_truncation_keeps_the_last_stack_in_final_observations():
    env = shoal.make("breakout", num_envs=2, seed=0, obs="pixels", frame_size=36, max_episode_frames=40)
    try:
        for actions in random_actions(env, 10):
            before = frames(env).copy()
            env.step(actions)
        assert env.truncations.all()
        final = env.final_observations.reshape(2, 4, 36, 36)
        # The stack before the step, shifted by one: the truncated episode's last frames.
        assert np.array_equal(final[:, :-1], before[:, 1:])
        assert not np.array_equal(final, frames(env))
    finally:
        env.close()


# ---- determinism and the vector mode ----


@pytest.mark.parametrize("name", PIXEL_GAMES)
def test_frames_do_not_depend_on_the_thread_count(name):
    results = []
    for threads in (1, 3):
        env = shoal.make(name, num_envs=6, seed=2, num_threads=threads, obs="pixels", frame_size=36)
        digest = hashlib.sha256(env.observations.tobytes())
        for actions in random_actions(env, 50):
            env.step(actions)
            digest.update(env.observations.tobytes())
            digest.update(env.final_observations.tobytes())
        results.append(digest.hexdigest())
        env.close()
    assert results[0] == results[1]


# Digests of 3000 steps of the vector observations, rewards and flags of 8 envs (seed 123, two
# threads, actions from default_rng(0)), measured before pixel mode existed.
VECTOR_DIGESTS = {"breakout": "c2ec58e2efc99b2a", "pong": "3e52ec47433f6467"}


@pytest.mark.parametrize("name", PIXEL_GAMES)
def test_vector_mode_is_unchanged(name):
    env = shoal.make(name, num_envs=8, seed=123, num_threads=2)
    rng = np.random.default_rng(0)
    digest = hashlib.sha256(env.observations.tobytes())
    for _ in range(3000):
        env.step(rng.integers(0, 3, 8).astype(np.int32))
        for array in (env.observations, env.rewards, env.terminals, env.truncations):
            digest.update(array.tobytes())
    env.close()
    assert digest.hexdigest()[:16] == VECTOR_DIGESTS[name]


# ---- RGB frames ----


@pytest.mark.parametrize("name,shape", [("breakout", (210, 160, 3)), ("pong", (216, 200, 3))])
def test_render_rgb_draws_the_ball_moving(name, shape):
    env = shoal.make(name, num_envs=2, seed=0)
    try:
        assert env.rgb_shape == shape
        first = env.render_rgb()
        assert first.shape == shape and first.dtype == np.uint8
        assert len(np.unique(first.reshape(-1, 3), axis=0)) >= 4  # background, walls, paddle, ball
        env.step(np.zeros(2, np.int32))
        second = env.render_rgb(1)
        assert second.shape == shape and not np.array_equal(env.render_rgb(0), first)
        with pytest.raises(IndexError, match="env index"):
            env.render_rgb(2)
    finally:
        env.close()


def test_snake_draws_the_cells_around_its_first_snake():
    env = shoal.make("snake", num_envs=1, seed=0, width=40, height=30, num_snakes=4, num_food=30)
    try:
        assert env.rgb_shape == (240, 320, 3)
        first = env.render_rgb()
        colours = {tuple(c) for c in np.unique(first.reshape(-1, 3), axis=0)}
        # Empty cells, walls (the crop passes the grid's edge), food, snake 0's head.
        assert {(12, 12, 16), (110, 110, 110), (220, 60, 60), (170, 255, 150)} <= colours
        env.step(np.zeros(env.num_agents, np.int32))
        assert not np.array_equal(env.render_rgb(), first)
    finally:
        env.close()


def test_render_rgb_is_the_same_picture_in_both_modes():
    with twins("breakout", num_envs=1, seed=4) as (vec, pix):
        for actions in random_actions(vec, 10):
            vec.step(actions)
            pix.step(actions)
        assert np.array_equal(vec.render_rgb(), pix.render_rgb())


def test_games_without_rgb_rendering_say_so_and_gifs_show_their_text():
    from shoal.cli import frame_of

    env = shoal.make("cartpole", num_envs=1)
    try:
        assert env.rgb_shape is None
        with pytest.raises(ValueError, match="no RGB rendering"):
            env.render_rgb()
        assert isinstance(frame_of(env, GifWriter()), str)
    finally:
        env.close()


def test_the_gif_writer_uses_real_frames(tmp_path):
    from PIL import Image

    from shoal.cli import frame_of

    env = shoal.make("breakout", num_envs=1, seed=0)
    writer = GifWriter()
    try:
        for _ in range(3):
            frame = frame_of(env, writer)
            assert isinstance(frame, np.ndarray) and frame.shape == (210, 160, 3)
            writer.add(frame)
            env.step(np.array([2], np.int32))
        # Without a GIF (the terminal player) the frame stays text.
        assert isinstance(frame_of(env, None), str)
    finally:
        env.close()
    path = writer.write(tmp_path / "breakout.gif", fps=10)
    with Image.open(path) as image:
        assert image.n_frames == 3 and image.size == (320, 420)  # enlarged twice, pixels repeated
        image.seek(0)
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 16)}
    assert (200, 72, 72) in colours  # the red top row of bricks


def test_text_gif_keeps_breakouts_right_wall_in_line():
    """The text picture's right wall must sit in one column on brick rows and empty rows."""
    env = shoal.make("breakout", num_envs=1, seed=0)
    text = env.render()
    env.close()
    image = np.asarray(GifWriter(font_size=16)._text_images_of([text])[0].convert("RGB")).astype(int)
    lines = text.split("\n")
    cell_h = image.shape[0] / (len([line for line in lines if line]) + 1)
    wall_columns = set()
    for line_number in (5, 12):  # an empty row and a brick row of the playfield
        y = int((line_number + 0.5) * cell_h)
        lit = np.nonzero(np.abs(image[y - 2 : y + 2] - image[2, 2]).sum(axis=(0, 2)) > 0)[0]
        wall_columns.add(int(lit.max()))
    assert max(wall_columns) - min(wall_columns) <= 1


# ---- the policy and the vector backends ----


def test_a_policy_for_a_pixel_env_has_a_cnn_encoder():
    env = shoal.make("breakout", num_envs=2, obs="pixels")
    try:
        torch.manual_seed(0)
        config = PolicyConfig(hidden_size=16, lstm=False)
        policy = make_policy(
            env.single_observation_space,
            env.single_action_space,
            config,
            structured_space=structured_observation_space(env),
        )
        assert policy.encoder_name == "nature"
        obs = torch.from_numpy(env.observations.copy())
        with torch.no_grad():
            logits, value, _ = policy.step(obs, policy.initial_state(2))
        assert logits.shape == (2, 3) and torch.isfinite(value).all()
    finally:
        env.close()


@pytest.mark.parametrize("backend", ["serial", "multiprocessing"])
def test_vector_backends_pass_the_image_structure_on(backend):
    env = vector.make(
        "breakout", backend=backend, num_envs=4, num_workers=2, seed=0,
        env_kwargs={"obs": "pixels", "frame_size": 36, "num_threads": 1},
    )  # fmt: skip
    try:
        assert structured_observation_space(env) == gymnasium.spaces.Box(0, 255, (4, 36, 36), np.uint8)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 4 * 36 * 36) and obs.dtype == np.uint8
    finally:
        env.close()
