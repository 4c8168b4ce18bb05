"""Gymnasium and PettingZoo adapters: any such env becomes a Shoal vector env.

The vector-env contract (docs/architecture.md, section 1) wants one flat observation row per
agent and a Discrete, MultiDiscrete or Box action space. These adapters

- flatten structured observation spaces (Dict, Tuple, nested, Discrete, MultiDiscrete,
  MultiBinary, Box of any shape) into one row; `unflatten` restores the structure on the policy
  side, for NumPy arrays and torch tensors alike;
- turn structured action spaces (Dict/Tuple of Discrete, MultiDiscrete, MultiBinary) into one
  MultiDiscrete and convert each row back before calling the env;
- reset finished episodes inside `step`, keep a truncated episode's last observation in
  `final_observations` and keep per-episode statistics for `log()`;
- for PettingZoo parallel envs, give every possible agent a fixed row, pad absent agents with
  zeros and mark them in `masks`.

Everything here runs in the calling process; `shoal.vector` spreads such envs over processes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

from shoal.atari import is_atari_id, make_atari
from shoal.core.checks import check_int, check_positive_int, check_seed
from shoal.core.contract import Batch
from shoal.core.episodes import EpisodeLog

# ---------------------------------------------------------------------------------------------
# Observation flattening
# ---------------------------------------------------------------------------------------------


class _Leaf(NamedTuple):
    kind: str                # "box", "discrete", "multidiscrete", "multibinary"
    offset: int
    size: int                # elements in the flat row
    shape: tuple[int, ...]   # the leaf's own shape (box, multibinary)
    nvec: np.ndarray | None  # category counts (discrete: one entry)
    start: np.ndarray | None


def _is_uint8_leaf(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8


class ObsFlattener:
    """Maps values of a (possibly structured) observation space to flat rows and back.

    Discrete and MultiDiscrete leaves become one-hot blocks; Box and MultiBinary leaves are
    copied element by element. The flat row is uint8 when every leaf is a uint8 Box (images
    stay compact) and float32 otherwise.
    """

    def __init__(self, space: spaces.Space) -> None:
        self.original_space = space
        self._leaves: list[_Leaf] = []
        self.tree = self._build(space, "observation space")
        self.size = sum(leaf.size for leaf in self._leaves)
        if self.size == 0:
            raise ValueError(f"observation space {space} has no elements to observe")
        leaf_spaces = list(_iter_leaf_spaces(space))
        self.dtype = np.dtype(np.uint8 if all(_is_uint8_leaf(s) for s in leaf_spaces) else np.float32)
        low = np.empty(self.size, dtype=np.float64)
        high = np.empty(self.size, dtype=np.float64)
        for leaf, leaf_space in zip(self._leaves, leaf_spaces, strict=True):
            block = slice(leaf.offset, leaf.offset + leaf.size)
            if leaf.kind == "box":
                low[block] = np.asarray(leaf_space.low, dtype=np.float64).reshape(-1)
                high[block] = np.asarray(leaf_space.high, dtype=np.float64).reshape(-1)
            else:
                low[block], high[block] = 0.0, 1.0
        if self.dtype == np.uint8:
            self.space = spaces.Box(low.astype(np.uint8), high.astype(np.uint8), dtype=np.uint8)
        else:
            self.space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        # A lone Box needs no tree walk: one reshape-and-copy per row.
        self._plain_box = isinstance(space, spaces.Box)

    def _build(self, space: spaces.Space, where: str) -> Any:
        offset = sum(leaf.size for leaf in self._leaves)
        if isinstance(space, spaces.Dict):
            items = space.spaces.items()
            return ("dict", [(key, self._build(sub, f"{where}[{key!r}]")) for key, sub in items])
        if isinstance(space, spaces.Tuple):
            return ("tuple", [self._build(sub, f"{where}[{i}]") for i, sub in enumerate(space.spaces)])
        if isinstance(space, spaces.Box):
            size = int(np.prod(space.shape, dtype=np.int64))
            leaf = _Leaf("box", offset, size, tuple(space.shape), None, None)
        elif isinstance(space, spaces.Discrete):
            leaf = _Leaf("discrete", offset, int(space.n), (), np.array([space.n]), np.array([space.start]))
        elif isinstance(space, spaces.MultiDiscrete):
            nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
            start = np.asarray(space.start, dtype=np.int64).reshape(-1)
            leaf = _Leaf("multidiscrete", offset, int(nvec.sum()), tuple(space.shape), nvec, start)
        elif isinstance(space, spaces.MultiBinary):
            shape = tuple(space.shape)
            leaf = _Leaf("multibinary", offset, int(np.prod(shape, dtype=np.int64)), shape, None, None)
        else:
            raise ValueError(
                f"unsupported space at {where}: {space!r}; expected Box, Discrete, MultiDiscrete, "
                "MultiBinary, or Dict/Tuple of those"
            )
        self._leaves.append(leaf)
        return ("leaf", len(self._leaves) - 1)

    def flatten(self, value: Any, out: np.ndarray) -> None:
        """Write one observation of the original space into the flat row `out`."""
        if self._plain_box:
            out[:] = np.asarray(value).reshape(-1)
        else:
            self._write(self.tree, value, out)

    def _write(self, node: Any, value: Any, out: np.ndarray) -> None:
        kind, payload = node
        if kind == "dict":
            for key, child in payload:
                self._write(child, value[key], out)
        elif kind == "tuple":
            for child, item in zip(payload, value, strict=True):
                self._write(child, item, out)
        else:
            leaf = self._leaves[payload]
            block = out[leaf.offset:leaf.offset + leaf.size]
            if leaf.kind in ("box", "multibinary"):
                block[:] = np.asarray(value).reshape(-1)
            else:
                block[:] = 0
                codes = np.asarray(value, dtype=np.int64).reshape(-1) - leaf.start
                starts = np.cumsum(leaf.nvec) - leaf.nvec
                block[starts + codes] = 1

    def unflatten(self, batch: Any) -> Any:
        """Restore the structure from flat rows `[..., obs_size]` (NumPy array or torch tensor).

        Box and MultiBinary leaves come back as views of shape `[..., *leaf_shape]` in the flat
        dtype; Discrete leaves as int64 indices `[...]`; MultiDiscrete leaves as int64 `[..., k]`.
        """
        if batch.shape[-1] != self.size:
            raise ValueError(
                f"unflatten expects rows of {self.size} elements (shape [..., {self.size}]), "
                f"got shape {tuple(batch.shape)}"
            )
        return self._read(self.tree, batch)

    def _read(self, node: Any, batch: Any) -> Any:
        kind, payload = node
        if kind == "dict":
            return {key: self._read(child, batch) for key, child in payload}
        if kind == "tuple":
            return tuple(self._read(child, batch) for child in payload)
        leaf = self._leaves[payload]
        lead = tuple(batch.shape[:-1])
        block = batch[..., leaf.offset:leaf.offset + leaf.size]
        if leaf.kind in ("box", "multibinary"):
            return block.reshape(lead + leaf.shape)
        is_torch = type(batch).__module__.startswith("torch")
        codes = []
        pos = 0
        for n, start in zip(leaf.nvec.tolist(), leaf.start.tolist(), strict=True):
            part = block[..., pos:pos + n]
            index = part.argmax(dim=-1) if is_torch else np.argmax(part, axis=-1).astype(np.int64)
            codes.append(index + start)
            pos += n
        if leaf.kind == "discrete":
            return codes[0]
        if is_torch:
            import torch

            return torch.stack(codes, dim=-1).reshape(lead + leaf.shape)
        return np.stack(codes, axis=-1).reshape(lead + leaf.shape)

    def __call__(self, batch: Any) -> Any:
        return self.unflatten(batch)

    def leaf_blocks(self) -> list[tuple[str, spaces.Space, slice]]:
        """(where, leaf space, its columns in the flat row) of every leaf, in row order; `where`
        names the leaf as a user would ("observation['pixels']")."""
        paths = _iter_leaf_paths(self.original_space, "observation")
        return [
            (path, space, slice(leaf.offset, leaf.offset + leaf.size))
            for leaf, (path, space) in zip(self._leaves, paths, strict=True)
        ]


def _iter_leaf_spaces(space: spaces.Space):
    for _, leaf in _iter_leaf_paths(space, ""):
        yield leaf


def _iter_leaf_paths(space: spaces.Space, where: str):
    # The order of ObsFlattener._build, which lays the leaves out in the row.
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            yield from _iter_leaf_paths(sub, f"{where}[{key!r}]")
    elif isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            yield from _iter_leaf_paths(sub, f"{where}[{i}]")
    else:
        yield where, space


def structured_observation_space(env: Any) -> spaces.Space:
    """The observation space `env`'s flat rows were flattened from (an image Box, a Dict, ...):
    what a policy needs to know to read images. A vector backend (shoal.vector) passes on its
    envs' `unflatten`, the ObsFlattener that knows it. Envs that flatten nothing (the native
    ones) have their flat space."""
    space = getattr(env, "structured_observation_space", None)
    if space is None:
        space = getattr(getattr(env, "unflatten", None), "original_space", None)
    return space if space is not None else env.single_observation_space


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


class ActionConverter:
    """Maps an env's action space to the contract's Discrete | MultiDiscrete | Box and back."""

    def __init__(self, space: spaces.Space) -> None:
        self.original_space = space
        self._kind: str
        if isinstance(space, spaces.Box):
            if not np.issubdtype(space.dtype, np.floating):
                raise ValueError(
                    f"integer Box action spaces are not supported (got {space}); use MultiDiscrete"
                )
            self._kind = "box"
            low = np.asarray(space.low, dtype=np.float32)
            high = np.asarray(space.high, dtype=np.float32)
            self.space: spaces.Space = spaces.Box(low, high, dtype=np.float32)
            return
        if isinstance(space, spaces.Discrete):
            self._kind = "discrete"
            self.space = spaces.Discrete(int(space.n))
            self._start = int(space.start)
            return
        self._kind = "structured"
        self._nvec: list[int] = []
        self.tree = self._build(space, "action space")
        if not self._nvec:
            raise ValueError(f"action space {space} has no action dimensions")
        self.space = spaces.MultiDiscrete(np.asarray(self._nvec, dtype=np.int64))

    def _build(self, space: spaces.Space, where: str) -> Any:
        pos = len(self._nvec)
        if isinstance(space, spaces.Dict):
            items = space.spaces.items()
            return ("dict", [(key, self._build(sub, f"{where}[{key!r}]")) for key, sub in items])
        if isinstance(space, spaces.Tuple):
            return ("tuple", [self._build(sub, f"{where}[{i}]") for i, sub in enumerate(space.spaces)])
        if isinstance(space, spaces.Discrete):
            self._nvec.append(int(space.n))
            return ("discrete", pos, int(space.start))
        if isinstance(space, spaces.MultiDiscrete):
            nvec = np.asarray(space.nvec, dtype=np.int64)
            self._nvec.extend(nvec.reshape(-1).tolist())
            return ("multidiscrete", pos, nvec.shape, np.asarray(space.start, dtype=np.int64), space.dtype)
        if isinstance(space, spaces.MultiBinary):
            shape = tuple(space.shape)
            size = int(np.prod(shape, dtype=np.int64))
            self._nvec.extend([2] * size)
            return ("multibinary", pos, shape)
        raise ValueError(
            f"unsupported action space at {where}: {space!r}; expected Discrete, MultiDiscrete, MultiBinary, "
            "a Dict/Tuple of those, or a float Box"
        )

    def convert(self, row: np.ndarray) -> Any:
        """One validated row of contract actions -> an action of the env's own space."""
        if self._kind == "box":
            return row
        if self._kind == "discrete":
            return int(row) + self._start
        return self._convert(self.tree, row)

    def _convert(self, node: Any, row: np.ndarray) -> Any:
        kind = node[0]
        if kind == "dict":
            return {key: self._convert(child, row) for key, child in node[1]}
        if kind == "tuple":
            return tuple(self._convert(child, row) for child in node[1])
        if kind == "discrete":
            return int(row[node[1]]) + node[2]
        if kind == "multidiscrete":
            _, pos, shape, start, dtype = node
            size = int(np.prod(shape, dtype=np.int64))
            return (row[pos:pos + size].reshape(shape) + start).astype(dtype)
        _, pos, shape = node
        size = int(np.prod(shape, dtype=np.int64))
        return row[pos:pos + size].reshape(shape).astype(np.int8)


def check_actions(actions: Any, space: spaces.Space, num_agents: int) -> np.ndarray:
    """Validate a batch of contract actions for `num_agents` rows; return them as an ndarray.

    Discrete: integers, shape [num_agents] (or [num_agents, 1]), 0 <= a < n -> int64 [num_agents].
    MultiDiscrete: integers, shape [num_agents, k], 0 <= a[:, j] < nvec[j] -> int64.
    Box: real numbers, shape [num_agents, *shape] (or flat), finite -> float32, clipped to the
    bounds because Gaussian policies sample outside them.
    """
    if type(actions).__module__.startswith("torch"):
        actions = actions.detach().cpu().numpy()
    arr = np.asarray(actions)
    if isinstance(space, spaces.Box):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"expected real-valued (float) actions for {space}, got dtype {arr.dtype}")
        size = int(np.prod(space.shape, dtype=np.int64))
        expected = (num_agents, *space.shape)
        if arr.shape != expected and arr.shape != (num_agents, size):
            raise ValueError(f"expected actions of shape {expected}, got {arr.shape}")
        arr = arr.reshape(expected).astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            row = int(np.argwhere(~np.isfinite(arr.reshape(num_agents, -1)))[0, 0])
            raise ValueError(
                f"expected finite continuous actions, got {arr[row].tolist()} (NaN or inf) in row {row}"
            )
        return np.clip(arr, space.low, space.high)
    if isinstance(space, spaces.Discrete):
        nvec = np.array([space.n], dtype=np.int64)
        if arr.shape == (num_agents, 1):
            arr = arr.reshape(num_agents)
        expected_shape: tuple[int, ...] = (num_agents,)
    elif isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
        expected_shape = (num_agents, nvec.size)
    else:
        raise TypeError(f"expected a Discrete, MultiDiscrete or Box action space, got {space!r}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"expected integer actions for {space}, got dtype {arr.dtype}")
    if arr.shape != expected_shape:
        raise ValueError(f"expected actions of shape {expected_shape} for {space}, got {arr.shape}")
    bad = (arr < 0) | (arr >= nvec)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        dim = where[1] if len(where) > 1 else 0
        raise ValueError(
            f"action {int(arr[where])} at index {where} is out of range: expected 0 <= a < {int(nvec[dim])} "
            f"for {space}"
        )
    return arr.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# Shared machinery of the adapters
# ---------------------------------------------------------------------------------------------


class _EpisodeStats:
    """The running episode of every agent row; finished episodes go to one `EpisodeLog`."""

    def __init__(self, num_agents: int) -> None:
        self.returns = np.zeros(num_agents, dtype=np.float64)
        self.lengths = np.zeros(num_agents, dtype=np.int64)
        self.finished = EpisodeLog()

    def finish(self, row: int, info: Mapping[str, Any] | None) -> None:
        """End row's episode; an env's `info` may give the episode's `score` and, when training
        sees altered rewards (Atari's clipped ones), its true `episode_return`."""
        episode_return = float(self.returns[row])
        if info and _is_number(info.get("episode_return")):
            episode_return = float(info["episode_return"])
        score = episode_return
        if info and _is_number(info.get("score")):
            score = float(info["score"])
        self.finished.add({
            "score": score,
            "episode_return": episode_return,
            "episode_length": float(self.lengths[row]),
            "episodes": 1,
        })
        self.returns[row] = 0.0
        self.lengths[row] = 0

    def restart(self, rows: slice | np.ndarray) -> None:
        self.returns[rows] = 0.0
        self.lengths[rows] = 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def continues_episode(info: Mapping[str, Any] | None) -> bool:
    """Whether a terminal step ends only the training episode (an Atari life) and the env's
    episode, the one the statistics count, goes on."""
    return bool(info) and info.get("episode_continues") is True


class _EmulatedVecEnv:
    """Buffers, statistics and the send/recv form shared by the Gymnasium and PettingZoo adapters."""

    def __init__(
        self,
        num_envs: int,
        agents_per_env: int,
        obs_space: spaces.Space,
        action_space: spaces.Space,
        seed: int,
    ) -> None:
        self.num_envs = num_envs
        self.agents_per_env = agents_per_env
        self.num_agents = num_envs * agents_per_env
        self.flattener = ObsFlattener(obs_space)
        self.actions_converter = ActionConverter(action_space)
        self.single_observation_space: spaces.Box = self.flattener.space
        self.single_action_space: spaces.Space = self.actions_converter.space
        # The space before flattening, for a policy that reads images (see
        # structured_observation_space); `unflatten` is the flattener itself (it is callable), so
        # that the vector backends, which pass it on, carry the space too.
        self.structured_observation_space: spaces.Space = obs_space
        self.unflatten = self.flattener
        n, size = self.num_agents, self.flattener.size
        self.observations = np.zeros((n, size), dtype=self.flattener.dtype)
        self.final_observations = np.zeros((n, size), dtype=self.flattener.dtype)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.terminals = np.zeros(n, dtype=bool)
        self.truncations = np.zeros(n, dtype=bool)
        self.masks = np.ones(n, dtype=bool)
        self.agent_ids = np.arange(n, dtype=np.int64)
        self._stats = _EpisodeStats(n)
        self._seed = seed
        self._seeded = False
        self._infos: list[dict] = []
        self._closed = False

    def _base_seed(self, seed: int | None) -> int | None:
        """The base seed of a reset: as given, else the constructor's the first time."""
        seed = check_seed(seed)
        if seed is None and not self._seeded:
            return self._seed
        return seed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this env is closed")

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        self._check_open()
        base = self._base_seed(seed)
        self._seeded = True
        self.rewards[:] = 0.0
        self.terminals[:] = False
        self.truncations[:] = False
        self._stats.restart(slice(None))
        self._infos = []
        self._reset_all(base)
        return self.observations, self._infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        self._check_open()
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        checked = check_actions(actions, self.single_action_space, self.num_agents)
        self._infos = []
        self._step_all(checked)
        return self.observations, self.rewards, self.terminals, self.truncations, self._infos

    def send(self, actions: Any) -> None:
        self.step(actions)

    def recv(self) -> Batch:
        self._check_open()
        if not self._seeded:
            raise RuntimeError("call reset() before recv()")
        return Batch(
            self.observations, self.rewards, self.terminals, self.truncations,
            self.final_observations, self._infos, self.agent_ids, self.masks,
        )

    def log(self) -> dict[str, float | int]:
        return self._stats.finished.pop()

    def __enter__(self) -> _EmulatedVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _describe(self, obs_row: np.ndarray) -> str:
        with np.printoptions(precision=3, suppress=True, linewidth=100, threshold=64):
            return f"env 0 observation: {obs_row}"

    # Subclasses fill these in.
    def _reset_all(self, base_seed: int | None) -> None:
        raise NotImplementedError

    def _step_all(self, actions: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _env_seed(base: int | None, index: int) -> int | None:
    return None if base is None else base + index


# ---------------------------------------------------------------------------------------------
# Gymnasium
# ---------------------------------------------------------------------------------------------


class GymnasiumVecEnv(_EmulatedVecEnv):
    """N Gymnasium envs stepped in turn in this process, under the Shoal vector-env contract."""

    def __init__(self, envs: Sequence[gymnasium.Env], seed: int = 0) -> None:
        if not envs:
            raise ValueError("expected at least one Gymnasium env, got none")
        obs_space, action_space = envs[0].observation_space, envs[0].action_space
        for i, env in enumerate(envs[1:], start=1):
            if env.observation_space != obs_space or env.action_space != action_space:
                raise ValueError(
                    f"all envs must share their spaces: env 0 has {obs_space} / {action_space}, "
                    f"env {i} has {env.observation_space} / {env.action_space}"
                )
        self.envs = list(envs)
        super().__init__(len(envs), 1, obs_space, action_space, seed)

    def _reset_all(self, base_seed: int | None) -> None:
        flatten = self.flattener.flatten
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=_env_seed(base_seed, i))
            flatten(obs, self.observations[i])

    def _step_all(self, actions: np.ndarray) -> None:
        flatten, convert = self.flattener.flatten, self.actions_converter.convert
        stats, infos = self._stats, self._infos
        for i, env in enumerate(self.envs):
            try:
                obs, reward, terminated, truncated, info = env.step(convert(actions[i]))
            except Exception as e:
                # Which copy failed, for the trainer's message; the exception keeps its type.
                e.add_note(f"raised by Gymnasium env index {i} of {len(self.envs)}")
                raise
            self.rewards[i] = reward
            self.terminals[i] = terminated
            self.truncations[i] = truncated
            stats.returns[i] += float(reward)
            stats.lengths[i] += 1
            if terminated or truncated:
                if truncated:
                    flatten(obs, self.final_observations[i])
                if not continues_episode(info):
                    stats.finish(i, info)
                obs, _ = env.reset()
            flatten(obs, self.observations[i])
            if info:
                infos.append(info)

    def render(self) -> str:
        env = self.envs[0]
        if getattr(env, "render_mode", None) == "ansi":
            return str(env.render())
        return self._describe(self.observations[0])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self.envs:
            env.close()


def make_gymnasium(
    env_id_or_creator: str | Callable[..., gymnasium.Env],
    num_envs: int = 1,
    seed: int = 0,
    **kwargs: Any,
) -> GymnasiumVecEnv:
    """`num_envs` copies of a Gymnasium env as one serial Shoal vector env.

    `env_id_or_creator` is an id for `gymnasium.make` (kwargs go to it) or a callable returning
    an env (called with kwargs). An ale-py game's id gets the standard Atari preprocessing
    (shoal.atari.make_atari, which takes its options from kwargs). Env i is seeded with
    `seed + i` on the first reset.
    """
    num_envs = check_positive_int("num_envs", num_envs)
    seed = check_int("seed", seed)
    if isinstance(env_id_or_creator, str) and is_atari_id(env_id_or_creator):
        env_id = env_id_or_creator

        def create() -> gymnasium.Env:
            return make_atari(env_id, **kwargs)
    elif isinstance(env_id_or_creator, str):
        env_id = env_id_or_creator

        def create() -> gymnasium.Env:
            return gymnasium.make(env_id, **kwargs)
    elif callable(env_id_or_creator):
        creator = env_id_or_creator

        def create() -> gymnasium.Env:
            return creator(**kwargs)
    else:
        raise TypeError(
            f"expected a Gymnasium env id or a callable returning an env, got {env_id_or_creator!r}"
        )
    envs: list[gymnasium.Env] = []
    try:
        for _ in range(num_envs):
            env = create()
            if not isinstance(env, gymnasium.Env):
                raise TypeError(f"expected the creator to return a gymnasium.Env, got {type(env).__name__}")
            envs.append(env)
        return GymnasiumVecEnv(envs, seed=seed)
    except BaseException:
        for env in envs:
            env.close()
        raise


# ---------------------------------------------------------------------------------------------
# PettingZoo (parallel API)
# ---------------------------------------------------------------------------------------------


class PettingZooVecEnv(_EmulatedVecEnv):
    """N PettingZoo parallel envs; every possible agent of env i owns row i * agents_per_env + j.

    `masks[row]` is True when the row holds a real agent at this step: it acted in the step just
    taken (so its reward and flags are real) or it is alive now with a real observation. Rows of
    absent agents are zeros with masks False. An env is reset once all its agents are done.
    """

    def __init__(self, envs: Sequence[Any], seed: int = 0) -> None:
        if not envs:
            raise ValueError("expected at least one PettingZoo env, got none")
        first = envs[0]
        self.possible_agents = list(first.possible_agents)
        if not self.possible_agents:
            raise ValueError("the PettingZoo env lists no possible_agents")
        obs_space = first.observation_space(self.possible_agents[0])
        action_space = first.action_space(self.possible_agents[0])
        for agent in self.possible_agents[1:]:
            if first.observation_space(agent) != obs_space:
                raise ValueError(
                    f"every agent must have the same observation space: agent {self.possible_agents[0]!r} "
                    f"has {obs_space}, agent {agent!r} has {first.observation_space(agent)}"
                )
            if first.action_space(agent) != action_space:
                raise ValueError(
                    f"every agent must have the same action space: agent {self.possible_agents[0]!r} "
                    f"has {action_space}, agent {agent!r} has {first.action_space(agent)}"
                )
        for i, env in enumerate(envs[1:], start=1):
            if list(env.possible_agents) != self.possible_agents:
                raise ValueError(
                    f"all envs must list the same possible_agents: env 0 has {self.possible_agents}, "
                    f"env {i} has {list(env.possible_agents)}"
                )
        self.envs = list(envs)
        self._agent_index = {agent: j for j, agent in enumerate(self.possible_agents)}
        super().__init__(len(envs), len(self.possible_agents), obs_space, action_space, seed)

    def _write_observations(self, env_index: int, obs: Mapping[str, Any], alive: Sequence[str]) -> None:
        base = env_index * self.agents_per_env
        rows = slice(base, base + self.agents_per_env)
        self.observations[rows] = 0
        for agent in alive:
            j = self._row_of(agent)
            if agent in obs:
                self.flattener.flatten(obs[agent], self.observations[base + j])
            self.masks[base + j] = True

    def _row_of(self, agent: str) -> int:
        try:
            return self._agent_index[agent]
        except KeyError:
            raise ValueError(f"agent {agent!r} is not in possible_agents {self.possible_agents}") from None

    def _reset_all(self, base_seed: int | None) -> None:
        self.masks[:] = False
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=_env_seed(base_seed, i))
            self._write_observations(i, obs, list(env.agents))

    def _step_all(self, actions: np.ndarray) -> None:
        convert = self.actions_converter.convert
        stats, infos, a = self._stats, self._infos, self.agents_per_env
        self.rewards[:] = 0.0
        self.terminals[:] = False
        self.truncations[:] = False
        self.masks[:] = False
        for i, env in enumerate(self.envs):
            base = i * a
            acting = list(env.agents)
            obs, rewards, terms, truncs, env_infos = env.step(
                {agent: convert(actions[base + self._row_of(agent)]) for agent in acting}
            )
            for agent in acting:
                row = base + self._row_of(agent)
                reward = float(rewards.get(agent, 0.0))
                terminated, truncated = bool(terms.get(agent, False)), bool(truncs.get(agent, False))
                self.rewards[row] = reward
                self.terminals[row] = terminated
                self.truncations[row] = truncated
                self.masks[row] = True
                stats.returns[row] += reward
                stats.lengths[row] += 1
                if terminated or truncated:
                    if truncated and agent in obs:
                        self.flattener.flatten(obs[agent], self.final_observations[row])
                    stats.finish(row, env_infos.get(agent))
            if not env.agents:
                obs, _ = env.reset()
                stats.restart(slice(base, base + a))
            self._write_observations(i, obs, list(env.agents))
            for agent in acting:
                info = env_infos.get(agent)
                if info:
                    infos.append(info)

    def render(self) -> str:
        env = self.envs[0]
        if getattr(env, "render_mode", None) == "ansi":
            return str(env.render())
        return self._describe(self.observations[: self.agents_per_env])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self.envs:
            env.close()


def _import_env_module(module_name: str, spec: str) -> Any:
    """Import `module_name`; a name inside PettingZoo may leave out the "pettingzoo." prefix."""
    candidates = [module_name]
    if not module_name.startswith("pettingzoo."):
        candidates.append(f"pettingzoo.{module_name}")
    first_error: ImportError | None = None
    for candidate in candidates:
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if not (candidate == missing or candidate.startswith(missing + ".")):
                # The module exists but one of its own dependencies is missing: say which.
                raise ValueError(
                    f"PettingZoo env module {candidate!r} (spec {spec!r}) needs a package that is not "
                    f"installed: {exc}"
                ) from exc
            first_error = first_error or exc
        except ImportError as exc:
            raise ValueError(
                f"cannot import PettingZoo env module {candidate!r} (spec {spec!r}): {exc}"
            ) from exc
    raise ValueError(
        f"cannot import PettingZoo env module {module_name!r} from spec {spec!r}: {first_error}"
    ) from first_error


def _resolve_spec(spec: str) -> Callable[..., Any]:
    """The creator named by "package.module:function" (just "package.module" means its parallel_env)."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "parallel_env"
    module = _import_env_module(module_name, spec)
    try:
        creator = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module.__name__!r} has no attribute {attr!r} (spec {spec!r})") from None
    if not callable(creator):
        raise ValueError(f"{spec!r} is not callable")
    return creator


def make_pettingzoo(
    env_or_creator: str | Callable[..., Any],
    num_envs: int = 1,
    seed: int = 0,
    **kwargs: Any,
) -> PettingZooVecEnv:
    """`num_envs` copies of a PettingZoo parallel env as one Shoal vector env.

    `env_or_creator` is a callable returning a ParallelEnv (called with kwargs) or a spec
    "module:function" such as "pettingzoo.butterfly.pistonball_v6:parallel_env".
    """
    num_envs = check_positive_int("num_envs", num_envs)
    seed = check_int("seed", seed)
    if isinstance(env_or_creator, str):
        creator = _resolve_spec(env_or_creator)
    elif callable(env_or_creator):
        creator = env_or_creator
    else:
        raise TypeError(f"expected a PettingZoo spec 'module:function' or a callable, got {env_or_creator!r}")
    envs: list[Any] = []
    try:
        for _ in range(num_envs):
            env = creator(**kwargs)
            required = ("possible_agents", "reset", "step", "observation_space", "action_space")
            missing = [name for name in required if not hasattr(env, name)]
            if missing:
                raise TypeError(
                    f"expected a PettingZoo ParallelEnv, got {type(env).__name__} without "
                    f"{', '.join(missing)} (an AEC env? wrap it with "
                    "pettingzoo.utils.conversions.aec_to_parallel)"
                )
            envs.append(env)
        return PettingZooVecEnv(envs, seed=seed)
    except BaseException:
        for env in envs:
            env.close()
        raise


__all__ = [
    "ActionConverter",
    "Batch",
    "GymnasiumVecEnv",
    "ObsFlattener",
    "PettingZooVecEnv",
    "check_actions",
    "make_gymnasium",
    "make_pettingzoo",
    "structured_observation_space",
]
