"""The Python face of Shoal's C environments: NumPy buffers, spaces and clear errors.

`NativeVecEnv` allocates every buffer once and hands it to the C extension, which steps all
envs in place (optionally over several threads). `step` returns the same array objects every
time, so callers that need history must copy.

Breakout and pong also draw their state in C: `obs="pixels"` makes the observation a stack of
grayscale frames (options `frame_size`, `frame_stack`; see docs/pixels.md), and
`render_rgb()` returns a colour picture of one env for GIFs.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from typing import Any, NamedTuple

import gymnasium
import numpy as np

from shoal.core.checks import check_int, check_positive_int, check_seed
from shoal.core.contract import Batch
from shoal.envs import _native


class OptionInfo(NamedTuple):
    name: str
    default: float
    min: float
    max: float
    is_int: bool
    help: str


class GameSpec(NamedTuple):
    name: str
    description: str
    options: tuple[OptionInfo, ...]


# Options whose values are names; C receives the name's index in the tuple.
CHOICE_OPTIONS: dict[str, tuple[str, ...]] = {"obs": ("vector", "pixels")}
# Options that only shape pixel observations: given with obs="vector" they are an error, since
# they would otherwise be silently ignored.
PIXEL_OPTIONS = ("frame_size", "frame_stack")


def _load_specs() -> dict[str, GameSpec]:
    specs = {}
    for game in _native.games():
        options = tuple(OptionInfo(**option) for option in game["options"])
        specs[game["name"]] = GameSpec(game["name"], game["description"], options)
    return specs


GAMES: dict[str, GameSpec] = _load_specs()


def native_env_names() -> list[str]:
    """Names of the C games compiled into the extension, in registration order."""
    return list(GAMES)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def game_spec(name: str) -> GameSpec:
    """The spec of native env `name`; ValueError with a suggestion for unknown names."""
    spec = GAMES.get(name)
    if spec is None:
        raise ValueError(
            f"unknown env '{name}'{_suggest(name, list(GAMES))} "
            f"Native envs: {', '.join(GAMES)}; others: 'gym:<id>', 'pettingzoo:<module>'."
        )
    return spec


def _choice_value(name: str, option: OptionInfo, value: Any) -> float:
    """The number C receives for a named choice (obs = "vector" / "pixels")."""
    choices = CHOICE_OPTIONS[option.name]
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"env '{name}' option {option.name} must be one of {valid}, got {value!r}")
    return float(choices.index(value))


def _check_pixel_options(name: str, options: dict[str, Any]) -> None:
    given = [key for key in PIXEL_OPTIONS if key in options]
    if given and options.get("obs", "vector") != "pixels":
        raise ValueError(
            f"env '{name}' option(s) {', '.join(given)} apply only to pixel observations; "
            f"add obs='pixels' (--env.options.obs pixels) or drop them"
        )


def resolve_options(name: str, options: dict[str, Any]) -> list[float]:
    """Validate `options` for env `name` and return all values in spec order (defaults filled)."""
    spec = game_spec(name)
    known = {o.name: o for o in spec.options}
    for key in options:
        if key not in known:
            valid = ", ".join(known) or "none"
            raise ValueError(
                f"env '{name}' has no option '{key}'{_suggest(key, list(known))} Valid options: {valid}."
            )
    if "obs" in known:
        _check_pixel_options(name, options)
    values = []
    for option in spec.options:
        if option.name in CHOICE_OPTIONS:
            default = CHOICE_OPTIONS[option.name][0]
            values.append(_choice_value(name, option, options.get(option.name, default)))
            continue
        value = options.get(option.name, option.default)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"option '{option.name}' of env '{name}' must be a number, "
                f"got {type(value).__name__} {value!r}"
            )
        value = float(value)
        if math.isnan(value) or not option.min <= value <= option.max:
            raise ValueError(
                f"option '{option.name}' of env '{name}' must be in [{option.min:g}, {option.max:g}], "
                f"got {value:g}"
                f" ({option.help})"
            )
        if option.is_int and not value.is_integer():
            raise ValueError(f"option '{option.name}' of env '{name}' must be a whole number, got {value:g}")
        values.append(value)
    return values


def _option_value(option: OptionInfo, value: float) -> Any:
    """An option's value as the user gives it (a name for choices, an int for whole numbers)."""
    if option.name in CHOICE_OPTIONS:
        return CHOICE_OPTIONS[option.name][int(value)]
    return int(value) if option.is_int else value


def _default_threads(num_envs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, num_envs))


class NativeVecEnv:
    """`num_envs` instances of one C game, stepped in place (see docs/architecture.md section 1)."""

    # With obs="pixels": the image Box the flat rows hold; None for vector observations.
    structured_observation_space: gymnasium.spaces.Box | None = None

    def __init__(
        self, name: str, num_envs: int = 1, seed: int = 0, num_threads: int = 1, **options: Any
    ) -> None:
        spec = game_spec(name)
        num_envs = check_positive_int("num_envs", num_envs)
        seed = check_int("seed", seed)
        num_threads = check_int("num_threads", num_threads)
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = choose for the machine), got {num_threads}")
        values = resolve_options(name, options)
        info = _native.configure(name, values)

        self.name = name
        self.spec = spec
        self.options = {o.name: _option_value(o, v) for o, v in zip(spec.options, values, strict=True)}
        self.num_envs = num_envs
        self.agents_per_env = int(info["agents_per_env"])
        self.num_agents = self.num_envs * self.agents_per_env
        self.seed = seed
        self._make_spaces(info)
        self._allocate(int(info["obs_size"]), np.dtype(info["obs_dtype"]))
        threads = _default_threads(self.num_envs) if num_threads == 0 else num_threads
        self._env = _native.VecEnv(
            name,
            self.num_envs,
            self.seed,
            values,
            threads,
            self.observations,
            self.final_observations,
            self.actions,
            self.rewards,
            self._terminals_u8,
            self._truncations_u8,
        )
        self.num_threads = self._env.num_threads
        rgb_shape = self._env.rgb_shape
        # (height, width, 3) of render_rgb(); None when the game draws only text.
        self.rgb_shape: tuple[int, int, int] | None = tuple(rgb_shape) if rgb_shape else None
        self._batch_ready = True  # the reset observations are waiting for recv()
        self._first_reset = True

    def _make_spaces(self, info: dict[str, Any]) -> None:
        obs_size = int(info["obs_size"])
        self.single_observation_space = gymnasium.spaces.Box(
            low=info["obs_low"], high=info["obs_high"], shape=(obs_size,), dtype=np.dtype(info["obs_dtype"])
        )
        frame_shape = info.get("frame_shape")
        if frame_shape is not None:
            # The flat row is (frame_stack, frame_size, frame_size) CHW frames; the policy reads
            # this structure (shoal.emulation.structured_observation_space) to choose a CNN.
            self.structured_observation_space = gymnasium.spaces.Box(0, 255, tuple(frame_shape), np.uint8)
        nvec = [int(n) for n in info["action_nvec"]]
        self._nvec = np.asarray(nvec, dtype=np.int64)
        if len(nvec) == 1:
            self.single_action_space: gymnasium.spaces.Space = gymnasium.spaces.Discrete(nvec[0])
            self._action_shape: tuple[int, ...] = (self.num_agents,)
        else:
            self.single_action_space = gymnasium.spaces.MultiDiscrete(nvec)
            self._action_shape = (self.num_agents, len(nvec))

    def _allocate(self, obs_size: int, obs_dtype: np.dtype) -> None:
        """The buffers C steps in place, allocated once."""
        n = self.num_agents
        self.observations = np.zeros((n, obs_size), dtype=obs_dtype)
        self.final_observations = np.zeros((n, obs_size), dtype=obs_dtype)
        self.actions = np.zeros(self._action_shape, dtype=np.int32)
        self.rewards = np.zeros(n, dtype=np.float32)
        self._terminals_u8 = np.zeros(n, dtype=np.uint8)
        self._truncations_u8 = np.zeros(n, dtype=np.uint8)
        # Bool views of the uint8 buffers C writes 0/1 into: the contract's dtype without a copy.
        self.terminals = self._terminals_u8.view(np.bool_)
        self.truncations = self._truncations_u8.view(np.bool_)
        self.agent_ids = np.arange(n, dtype=np.int64)
        self.masks = np.ones(n, dtype=np.bool_)

    # ---- synchronous API ----

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Reset every env; with a seed, each env's stream restarts from (seed, env index).

        Without a seed, the first call uses the constructor's seed and later calls continue
        each env's stream.
        """
        seed = check_seed(seed)
        if seed is None and self._first_reset:
            # The first reset replays the constructor's seed, so make(...).reset() gives the
            # same episodes as stepping right after make(...).
            seed = self.seed
        self._first_reset = False
        self._env.reset(seed)
        self.rewards.fill(0.0)
        self._terminals_u8.fill(0)
        self._truncations_u8.fill(0)
        self._batch_ready = True
        self._sent = False
        return self.observations, []

    def _load_actions(self, actions: Any) -> None:
        array = actions if isinstance(actions, np.ndarray) else np.asarray(actions)
        if array.dtype.kind not in "iu":
            raise TypeError(
                f"actions must be integers (expected int32 of shape {self._action_shape}), "
                f"got dtype {array.dtype}"
            )
        if array.shape != self._action_shape:
            # A (num_agents, 1) column for a Discrete space is what many policies emit.
            if self._action_shape == (self.num_agents,) and array.shape == (self.num_agents, 1):
                array = array.reshape(self._action_shape)
            else:
                dims = "" if len(self._nvec) == 1 else f", {len(self._nvec)} action dims"
                raise ValueError(
                    f"actions must have shape {self._action_shape} (num_agents={self.num_agents}{dims}), "
                    f"got {array.shape}"
                )
        if array.dtype != np.int32 and array.size:
            # A wider integer could wrap into range when narrowed to int32; check it first.
            low, high = int(array.min()), int(array.max())
            if low < 0 or high >= int(self._nvec.max()) or high > np.iinfo(np.int32).max:
                flat = array.reshape(self.num_agents, -1)
                bad = np.argwhere((flat < 0) | (flat >= self._nvec))
                agent, dim = (int(bad[0][0]), int(bad[0][1])) if len(bad) else (0, 0)
                raise ValueError(
                    f"action of agent {agent} is {int(flat[agent, dim])}; expected an integer in "
                    f"[0, {int(self._nvec[dim])})"
                )
        np.copyto(self.actions, array, casting="unsafe")

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Advance every env one step; auto-resets finished episodes. Returns shared arrays."""
        self._load_actions(actions)
        self._env.step()
        return self.observations, self.rewards, self.terminals, self.truncations, []

    # ---- asynchronous API (synchronous underneath) ----

    def send(self, actions: Any) -> None:
        """Step with `actions` for all agents; the result waits for `recv()`."""
        if self._batch_ready and self._sent:
            raise RuntimeError("send() called twice without recv(); call recv() to collect the last step")
        self.step(actions)
        self._sent = True
        self._batch_ready = True

    def recv(self) -> Batch:
        """The batch produced by the last `send()` (or the reset observations)."""
        if not self._batch_ready:
            raise RuntimeError("recv() called without a pending batch; call reset() or send(actions) first")
        self._batch_ready = False
        self._sent = False
        return Batch(
            self.observations,
            self.rewards,
            self.terminals,
            self.truncations,
            self.final_observations,
            [],
            self.agent_ids,
            self.masks,
        )

    _sent = False

    # ---- statistics, rendering, lifetime ----

    def log(self) -> dict[str, float]:
        """Means over the episodes finished since the last call; {} if none finished."""
        sums = self._env.log()
        n = sums["n"]
        if n <= 0:
            return {}
        return {
            "score": sums["score"] / n,
            "episode_return": sums["episode_return"] / n,
            "episode_length": sums["episode_length"] / n,
            "episodes": int(n),
        }

    def render(self, index: int = 0) -> str:
        """ANSI text picture of env `index` (env 0 by default)."""
        return self._env.render(index)

    def render_rgb(self, index: int = 0) -> np.ndarray:
        """A new (height, width, 3) uint8 colour picture of env `index`, drawn in C from the
        game state (breakout, pong); ValueError for games that draw only text (`rgb_shape` is
        None)."""
        if self.rgb_shape is None:
            raise ValueError(f"env '{self.name}' has no RGB rendering; use render() for its text picture")
        frame = np.empty(self.rgb_shape, dtype=np.uint8)
        self._env.render_rgb(index, frame)
        return frame

    def close(self) -> None:
        self._env.close()

    @property
    def closed(self) -> bool:
        return bool(self._env.closed)

    def __enter__(self) -> NativeVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return (
            f"NativeVecEnv('{self.name}', num_envs={self.num_envs}, num_threads={self.num_threads}"
            f"{', ' + opts if opts else ''})"
        )


class GymnasiumView(gymnasium.Env):
    """One native env as a `gymnasium.Env` (single-agent games only).

    The native env auto-resets: on a terminal step the returned observation is already the
    next episode's first one (the terminal state's observation is not kept). On truncation
    the true last observation is returned. Call `reset()` after an episode ends as usual.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 30}

    def __init__(self, name: str, render_mode: str | None = None, **options: Any) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self._vec = NativeVecEnv(name, num_envs=1, seed=0, num_threads=1, **options)
        if self._vec.agents_per_env != 1:
            agents = self._vec.agents_per_env
            self._vec.close()
            raise ValueError(f"GymnasiumView needs a single-agent env; '{name}' has {agents} agents per env")
        self.render_mode = render_mode
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._action = np.zeros(self._vec._action_shape, dtype=np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            # Draw the native seed from Gymnasium's generator so unseeded resets still differ.
            seed = int(self.np_random.integers(0, 2**63 - 1))
        self._vec.reset(seed=seed)
        return self._vec.observations[0].copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self._action[0] = np.asarray(action, dtype=np.int64)
        obs, rewards, terminals, truncations, _ = self._vec.step(self._action)
        truncated = bool(truncations[0])
        observation = (self._vec.final_observations[0] if truncated else obs[0]).copy()
        return observation, float(rewards[0]), bool(terminals[0]), truncated, {}

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._vec.render()
        return None

    def close(self) -> None:
        self._vec.close()
