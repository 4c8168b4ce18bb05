"""Atari through ale-py: the preprocessing against an independent reference, the training signals
(life loss, reward clipping) against hand-worked sequences, the statistics, the errors and a
short training run."""

from __future__ import annotations

import sys

import cv2
import gymnasium
import numpy as np
import pytest

from shoal.atari import GameEpisodes, check_game, is_atari_id, make_atari, needs_fire, split_options
from shoal.core.config import ConfigError, load_config
from shoal.emulation import GymnasiumVecEnv, make_gymnasium
from shoal.envs.registry import make
from shoal.train import recipe

pytest.importorskip("ale_py")

PONG = "ALE/Pong-v5"
BREAKOUT = "ALE/Breakout-v5"


# ---- the preprocessing against an independent reference ----


class ReferencePreprocessing:
    """The standard preprocessing written out on ale-py's single-frame env: each action held for
    4 frames, the pixel-wise max of the last two grayscale screens, INTER_AREA to 84x84, 4 stacked,
    FIRE once after the reset (Pong waits for it), no no-ops."""

    def __init__(self, seed: int) -> None:
        self.env = gymnasium.make(PONG, frameskip=1, repeat_action_probability=0.0)
        self.env.reset(seed=seed)
        self.ale = self.env.unwrapped.ale
        first = self.act(1)
        self.stack = [first] * 4

    def act(self, action: int) -> np.ndarray:
        screens = []
        for frame in range(4):
            self.env.step(action)
            if frame >= 2:
                screens.append(self.ale.getScreenGrayscale())
        pooled = np.maximum(screens[0], screens[1])
        return cv2.resize(pooled, (84, 84), interpolation=cv2.INTER_AREA)

    def step(self, action: int) -> np.ndarray:
        self.stack = [*self.stack[1:], self.act(action)]
        return np.stack(self.stack)


def test_frames_match_the_preprocessing_written_out_by_hand():
    env = make_atari(PONG, noop_max=0, repeat_action_probability=0.0)
    obs, _ = env.reset(seed=3)
    reference = ReferencePreprocessing(seed=3)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, np.stack(reference.stack))
    rng = np.random.default_rng(0)
    for action in rng.integers(0, 6, size=40):
        obs, *_ = env.step(int(action))
        np.testing.assert_array_equal(obs, reference.step(int(action)))
    # The frames move: the newest differs from the oldest once the ball is in play.
    assert (obs[-1] != obs[0]).any()


def test_max_pooling_takes_the_brighter_of_the_last_two_frames():
    reference = ReferencePreprocessing(seed=0)
    screens = []
    for _frame in range(4):
        reference.env.step(0)
        screens.append(reference.ale.getScreenGrayscale())
    assert (np.maximum(screens[2], screens[3]) >= screens[3]).all()


# ---- the training signals, hand-worked ----


class ScriptedGame(gymnasium.Env):
    """A game whose rewards and lives follow a script, with ale-py's `ale.lives()`."""

    observation_space = gymnasium.spaces.Box(0, 255, (1,), np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, rewards: list[float], lives: list[int], start_lives: int) -> None:
        self.script = list(zip(rewards, lives, strict=True))
        self.start_lives = start_lives
        self.t = 0
        self.resets = 0
        game = self

        class Lives:
            def lives(self) -> int:
                return game.current_lives

        self.ale = Lives()
        self.current_lives = start_lives

    def reset(self, *, seed=None, options=None):
        self.t, self.resets, self.current_lives = 0, self.resets + 1, self.start_lives
        return np.array([0], np.uint8), {}

    def step(self, action):
        reward, self.current_lives = self.script[self.t]
        self.t += 1
        return np.array([self.t], np.uint8), reward, self.current_lives == 0, False, {}


def test_life_loss_ends_the_training_episode_and_the_game_goes_on():
    game = ScriptedGame(rewards=[4, 0, -3, 7, 1], lives=[3, 3, 2, 2, 0], start_lives=3)
    env = GameEpisodes(game)
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(3)]
    assert [s[1] for s in steps] == [1.0, 0.0, -1.0]  # clipped to their sign
    assert [s[2] for s in steps] == [False, False, True]  # the life lost at step 3
    assert steps[2][4] == {"episode_continues": True}
    obs, _ = env.reset()
    assert obs[0] == 3 and game.resets == 1  # the same frame; the game was not restarted
    obs, reward, terminated, _, info = env.step(0)
    assert (reward, terminated, info) == (1.0, False, {})
    *_, terminated, _, info = env.step(0)
    assert terminated and info == {"episode_return": 9.0, "score": 9.0}  # 4 + 0 - 3 + 7 + 1, unclipped
    env.reset()
    assert game.resets == 2  # a finished game restarts


def test_without_life_loss_or_clipping_the_game_passes_through():
    game = ScriptedGame(rewards=[4, -3, 2], lives=[3, 2, 0], start_lives=3)
    env = GameEpisodes(game, life_loss=False, clip_rewards=False)
    env.reset(seed=0)
    results = [env.step(0) for _ in range(3)]
    assert [r[1] for r in results] == [4, -3, 2]
    assert [r[2] for r in results] == [False, False, True]


def test_statistics_count_whole_games_with_their_true_score():
    game = ScriptedGame(rewards=[4, 0, -3, 7, 1], lives=[3, 3, 2, 2, 0], start_lives=3)
    vec = GymnasiumVecEnv([GameEpisodes(game)])
    vec.reset(seed=0)
    terminals = []
    for _ in range(3):
        _, rewards, term, _, _ = vec.step(np.zeros(1, np.int64))
        terminals.append(bool(term[0]))
    assert terminals == [False, False, True]
    assert vec.log() == {}  # a lost life is no finished game
    for _ in range(2):
        vec.step(np.zeros(1, np.int64))
    log = vec.log()
    assert log["episodes"] == 1 and log["episode_return"] == 9.0 and log["score"] == 9.0
    assert log["episode_length"] == 5


def test_a_real_breakout_game_ends_after_its_lives_with_one_logged_game():
    vec = make_gymnasium(BREAKOUT, num_envs=1, seed=0, noop_max=0)
    vec.reset(seed=0)
    lives_lost, log = 0, {}
    for _ in range(20_000):  # FIRE relaunches the ball after each life; the paddle never moves
        _, _, term, trunc, infos = vec.step(np.ones(1, np.int64))
        lives_lost += sum(1 for info in infos if info.get("episode_continues"))
        log = vec.log()
        if log:
            break
    assert lives_lost == 4 and log["episodes"] == 1
    assert log["score"] >= 0 and log["episode_length"] > 50


def test_fire_on_reset_only_where_the_game_waits_for_it():
    assert needs_fire(gymnasium.make(BREAKOUT))
    assert not needs_fire(gymnasium.make("ALE/MsPacman-v5"))


# ---- names, options and errors ----


def test_atari_ids_are_recognised():
    assert is_atari_id(PONG) and is_atari_id("PongNoFrameskip-v4")
    assert not is_atari_id("CartPole-v1")


def test_the_vector_env_carries_the_frame_stack_as_an_image():
    env = make("gym:" + PONG, num_envs=2, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4 * 84 * 84) and obs.dtype == np.uint8
    assert env.structured_observation_space.shape == (4, 84, 84)
    env.close()


def test_preprocessing_options_are_split_from_ale_options():
    pre, ale = split_options({"frame_stack": 2, "repeat_action_probability": 0.0})
    assert pre["frame_stack"] == 2 and pre["screen_size"] == 84 and ale == {"repeat_action_probability": 0.0}
    env = make_atari(PONG, frame_stack=2, screen_size=64)
    assert env.observation_space.shape == (2, 64, 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"frame_stack": 0}, "frame_stack"),
        ({"noop_max": -1}, "noop_max"),
        ({"clip_rewards": "yes"}, "clip_rewards"),
    ],
)
def test_bad_preprocessing_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        split_options(options)


def test_an_unknown_game_suggests_the_close_ones():
    with pytest.raises(ValueError, match=r"ale-py has no game 'ALE/Pongg-v5'.*did you mean 'ALE/Pong-v5'"):
        check_game("ALE/Pongg-v5")
    with pytest.raises(ValueError, match="ale-py has no game"):
        make("gym:ALE/Pongg-v5")


def test_a_missing_ale_py_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(ImportError, match=r"\.\[atari\]"):
        make("gym:" + PONG)


# ---- the recipe and a short run ----


def test_an_atari_game_derives_the_cnn_recipe():
    cfg = load_config("gym:" + PONG, [], derive=recipe.derive_into)
    assert cfg.env.recipe == "derived"
    assert cfg.policy.hidden_size == 512 and not cfg.policy.lstm and not cfg.policy.obs_norm
    assert (cfg.env.num_envs, cfg.train.batch_size, cfg.train.minibatch_size) == (16, 2048, 128)
    assert cfg.train.update_epochs == 4 and cfg.train.learning_rate == 1e-3
    assert cfg.train.gamma == 0.99 and cfg.train.clip_coef == 0.1 and cfg.train.lr_schedule == "linear"
    assert cfg.train.total_steps == 10_000_000 and cfg.train.precision == "auto"


def test_a_short_training_run_on_pong_pixels(tmp_path):
    from shoal.train import train

    flags = [
        "--env.num-envs", "2", "--env.backend", "serial", "--train.batch-size", "64",
        "--train.minibatch-size", "32", "--train.total-steps", "128", "--train.update-epochs", "1",
    ]
    cfg = load_config("gym:" + PONG, flags, derive=recipe.derive_into)
    cfg.run.dir, cfg.run.quiet = str(tmp_path), True
    result = train(cfg)
    assert result.metrics["agent_steps"] == 128


def test_a_cnn_config_on_a_mlp_only_option_is_refused():
    cfg = load_config("gym:" + PONG, ["--policy.obs-norm", "true"], derive=recipe.derive_into)
    from shoal.train import train

    with pytest.raises(ConfigError, match="obs_norm"):
        train(cfg)
