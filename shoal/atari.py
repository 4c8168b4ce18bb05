"""Atari games through ale-py, with the preprocessing every Atari result in the literature uses.

``make_atari("ALE/Pong-v5")`` gives a Gymnasium env whose observations are a stack of 4
grayscale 84x84 frames (uint8, channels first) and whose training signals follow Mnih et al.
(2015) and Machado et al. (2018):

- up to 30 no-op actions after each reset (varied starting states);
- each action repeated for 4 frames, the observation the pixel-wise max of the last two (Atari
  sprites flicker between frames);
- FIRE pressed after a reset in games that wait for it (Breakout, ...);
- a lost life ends the *training* episode (the value is not bootstrapped across it) while the
  game goes on: the next ``reset()`` continues it instead of restarting;
- rewards clipped to their sign for training.

What the dashboard and metrics report is the game as a player sees it: one episode per game
(all lives), its return the unclipped score. The adapter learns this from two keys of the step's
``info`` (see ``shoal.emulation``): ``episode_continues`` on a life's end, and ``episode_return``
(and ``score``) at the game's end.

ale-py's wheel ships the ROMs, so nothing is downloaded. ``ale_py`` is imported only when an
Atari id is made.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from shoal.core.checks import check_positive_int

ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"
ATARI_EXTRA = "pip install -e '.[atari]'  (or: pip install ale-py opencv-python-headless)"
# Preprocessing options that shoal.make / --env.options take for Atari ids (the rest go to
# ale-py's env: repeat_action_probability, full_action_space, mode, difficulty, ...).
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "frameskip": 4,
    "frame_stack": 4,
    "screen_size": 84,
    "noop_max": 30,
    "terminal_on_life_loss": True,
    "clip_rewards": True,
}


def is_atari_id(env_id: str) -> bool:
    """Whether `env_id` names an ale-py game ("ALE/Pong-v5", "PongNoFrameskip-v4", ...)."""
    if env_id.startswith("ALE/"):
        return True
    spec = _registered_spec(env_id)
    if spec is None and importlib.util.find_spec("ale_py") is not None:
        _import_ale()
        spec = _registered_spec(env_id)
    return spec is not None and spec.entry_point == ATARI_ENTRY_POINT


def _registered_spec(env_id: str) -> gymnasium.envs.registration.EnvSpec | None:
    return gymnasium.registry.get(env_id)


def _import_ale() -> Any:
    try:
        import ale_py
    except ImportError as e:
        raise ImportError(f"Atari games need ale-py, which is not installed: {ATARI_EXTRA}") from e
    gymnasium.register_envs(ale_py)
    return ale_py


def check_game(env_id: str) -> None:
    """ValueError naming close matches when ale-py has no game `env_id`."""
    _import_ale()
    if _registered_spec(env_id) is not None:
        return
    games = sorted(k for k, s in gymnasium.registry.items() if s.entry_point == ATARI_ENTRY_POINT)
    close = difflib.get_close_matches(env_id, games, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    examples = ", ".join(g for g in games if g.startswith("ALE/"))[:300]
    raise ValueError(f"ale-py has no game {env_id!r}{hint} Its games include: {examples}, ...")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(preprocessing options with defaults filled, the options left for ale-py's env)."""
    preprocessing = dict(PREPROCESSING_DEFAULTS)
    ale_options = {}
    for key, value in options.items():
        if key in preprocessing:
            preprocessing[key] = value
        else:
            ale_options[key] = value
    for key in ("frameskip", "frame_stack", "screen_size"):
        preprocessing[key] = check_positive_int(f"Atari option {key}", preprocessing[key])
    noop_max = preprocessing["noop_max"]
    if isinstance(noop_max, bool) or not isinstance(noop_max, int) or noop_max < 0:
        raise ValueError(f"Atari option noop_max must be an int >= 0, got {preprocessing['noop_max']!r}")
    for key in ("terminal_on_life_loss", "clip_rewards"):
        if not isinstance(preprocessing[key], bool):
            raise ValueError(f"Atari option {key} must be true or false, got {preprocessing[key]!r}")
    return preprocessing, ale_options


def make_atari(env_id: str, **options: Any) -> gymnasium.Env:
    """An ale-py game with the standard preprocessing (module docstring); `options` are the
    PREPROCESSING_DEFAULTS keys and ale-py's own (repeat_action_probability, mode, ...)."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    check_game(env_id)
    if importlib.util.find_spec("cv2") is None:
        raise ImportError(f"Atari preprocessing resizes frames with OpenCV, not installed: {ATARI_EXTRA}")
    pre, ale_options = split_options(options)
    # The frame skip (with max-pooling) is the wrapper's; ale-py must step single frames.
    env = gymnasium.make(env_id, frameskip=1, **ale_options)
    env = AtariPreprocessing(
        env,
        noop_max=pre["noop_max"],
        frame_skip=pre["frameskip"],
        screen_size=pre["screen_size"],
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if needs_fire(env):
        env = FireOnReset(env)
    env = FrameStackObservation(env, pre["frame_stack"])
    return GameEpisodes(env, life_loss=pre["terminal_on_life_loss"], clip_rewards=pre["clip_rewards"])


def needs_fire(env: gymnasium.Env) -> bool:
    """Whether the game waits for FIRE to start (its second action is FIRE)."""
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


class FireOnReset(gymnasium.Wrapper):
    """Presses FIRE after every reset, for games that wait for it to launch the ball."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset()
        return obs, info


class GameEpisodes(gymnasium.Wrapper):
    """Training episodes end at each lost life (when `life_loss`) and see clipped rewards (when
    `clip_rewards`); a game's statistics cover all its lives and the unclipped score.

    On a life lost mid-game the step returns terminated with ``info["episode_continues"] =
    True``; the following ``reset()`` returns that step's observation and the game goes on. At the
    game's end ``info["episode_return"]`` and ``info["score"]`` hold the game's unclipped score.
    """

    def __init__(self, env: gymnasium.Env, life_loss: bool = True, clip_rewards: bool = True) -> None:
        super().__init__(env)
        self.life_loss = life_loss
        self.clip_rewards = clip_rewards
        self._lives = 0
        self._game_over = True
        self._game_score = 0.0
        self._last_obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if not self._game_over and kwargs.get("seed") is None:
            return self._last_obs, {"lives": self._lives}
        obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        self._game_over = False
        self._game_score = 0.0
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        # The inner wrappers' per-step info (frame counters, lives) is dropped: the vector env
        # would carry it across processes on every step for nothing.
        obs, reward, terminated, truncated, _ = self.env.step(action)
        info: dict[str, Any] = {}
        self._game_score += float(reward)
        lives = self.env.unwrapped.ale.lives()
        life_lost = lives < self._lives
        self._lives = lives
        self._last_obs = obs
        self._game_over = terminated or truncated
        if self._game_over:
            info = {"episode_return": self._game_score, "score": self._game_score}
        elif self.life_loss and life_lost:
            terminated = True
            info = {"episode_continues": True}
        if self.clip_rewards:
            reward = float(np.sign(reward))
        return obs, reward, terminated, truncated, info
