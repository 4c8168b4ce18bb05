"""Shoal with no flags against Stable-Baselines3 PPO, env by env, at the same wall-clock budget.

    python benchmarks/suite.py                                  # the default suite, 150 s per run, 1 seed
    python benchmarks/suite.py CartPole-v1 pong --budget 60 --seeds 2
    python benchmarks/suite.py --budget 150 --out benchmarks/results/suite
    python benchmarks/suite.py HalfCheetah-v5 --references sb3          # skip the zoo reference
    python benchmarks/suite.py --plot-only benchmarks/results/suite     # redraw table + plots from JSON
    python benchmarks/suite.py LunarLander-v3 --rerun sb3 --out benchmarks/results/suite  # redo one run

The default suite: CartPole-v1, LunarLander-v3, MountainCarContinuous-v0, HalfCheetah-v5, Ant-v5
(Gymnasium ids: Shoal trains `gym:ID`), pong and snake (Shoal's C envs). For every env and seed,
back to back on the same machine and each in a fresh subprocess of this script (its own torch,
thread settings and OpenMP state), three runs get the same budget:

- shoal: what `shoal train ENV` runs with no flags (the recipe file, or for an env without one
  the recipe derived from a short probe of the env), quiet, stopped at the budget. A recipe's
  own train.target_score or train.total_steps may end it sooner, as it would a user's run (the
  table marks Shoal's final return "(target)" or "(steps)" then).
- sb3: SB3 PPO as a new user runs it: PPO("MlpPolicy", env, seed=seed, device="cpu") on
  make_vec_env(ID, n_envs=1, seed=seed) (a C env: one Shoal env, one SB3 env per agent).
- zoo: SB3 PPO with the RL Baselines3 Zoo's tuned hyperparameters (ZOO below), where the zoo
  publishes them; it stops at the budget or at the zoo's own n_timesteps, whichever comes first.

SB3 runs with --threads torch threads (default min(2, cores), torch's own default here); Shoal
keeps its own thread choice unless --threads is given.

What is compared is the mean return (the true, unscaled sum of rewards) of the last 100 finished
training episodes, against wall time. The clocks start when training starts, after setup: Shoal's
is the trainer's wall_time (it excludes the recipe's env probe, building the envs and the policy;
those seconds are printed and saved apart as probe+setup), SB3's starts in its callback's
_on_training_start. Shoal is stopped at the first epoch whose wall_time reaches the budget, SB3 at
the first vector step past it, so both may overrun by up to one epoch or one update. The curve
gets a point per epoch (Shoal) or per rollout (SB3) and at the stop.

The table, one row per env (medians over seeds): the final return of each method, Shoal's time to
reach SB3-defaults' final return (median over seeds of the first wall_time at which Shoal's
curve is at least that median SB3 final; a seed that never gets there counts as infinitely slow,
"never"), the speed-up budget / that time, and the verdict: "3x" when that time is at most a
third of the budget, else "above" when Shoal's final return beats SB3's, else "below". Steps/s
are agent steps over the clocked wall time. Everything goes to --out: suite.json (all runs, their
curves and settings), suite.png and suite.md.

It needs `pip install -e ".[bench]"` (stable-baselines3) unless --references none, and
`pip install -e ".[envs]"` for the Box2D and MuJoCo envs (an env whose dependency is missing is
skipped). Each worker's stderr is kept in --out/logs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_ENVS = [
    "CartPole-v1",
    "LunarLander-v3",
    "MountainCarContinuous-v0",
    "HalfCheetah-v5",
    "Ant-v5",
    "pong",
    "snake",
]
METHODS = ("shoal", "sb3", "zoo")
REFERENCES = ("sb3", "zoo")
DEFAULT_BUDGET = 150.0
# SB3 with library defaults trains "for ever": the budget stops it.
SB3_FOREVER = 10**9
MISSING_DEPENDENCY_EXIT = 3
SB3_MISSING = (
    'stable-baselines3 is not installed: install it with `pip install -e ".[bench]"` '
    "(or run Shoal alone with --references none)"
)
ENVS_EXTRA = 'pip install -e ".[envs]"'

# The zoo's tuned PPO settings: rl-baselines3-zoo, hyperparams/ppo.yml (DLR-RM/rl-baselines3-zoo,
# commit 208b6fdf3a9aa24de44b2e068c6e5f6a07d97fcc). "zoo_key" is the entry used; the zoo lists
# older versions of these envs with the same dynamics and rewards, so their settings serve for the
# Gymnasium versions here. CartPole-v1 is benchmarks/learning.py's SB3_CARTPOLE (same file).
# policy_kwargs are the zoo's strings written out as Python; the activation is named "nn.<Class>"
# and resolved to torch.nn.<Class> in zoo_setup, because importing torch here would load it
# before the Shoal worker can set the OpenMP wait policy.
ZOO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"zoo_key": "CartPole-v1"},
    "LunarLander-v3": {
        "zoo_key": "LunarLander-v2",
        "n_envs": 16,
        "n_timesteps": 1_000_000,
        "policy": "MlpPolicy",
        "n_steps": 1024,
        "batch_size": 64,
        "gae_lambda": 0.98,
        "gamma": 0.999,
        "n_epochs": 4,
        "ent_coef": 0.01,
    },
    "MountainCarContinuous-v0": {
        "zoo_key": "MountainCarContinuous-v0",
        "normalize": True,
        "n_envs": 1,
        "n_timesteps": 20_000,
        "policy": "MlpPolicy",
        "batch_size": 256,
        "n_steps": 8,
        "gamma": 0.9999,
        "learning_rate": 7.77e-05,
        "ent_coef": 0.00429,
        "clip_range": 0.1,
        "n_epochs": 10,
        "gae_lambda": 0.9,
        "max_grad_norm": 5,
        "vf_coef": 0.19,
        "use_sde": True,
        "policy_kwargs": dict(log_std_init=-3.29, ortho_init=False),
    },
    "HalfCheetah-v5": {
        "zoo_key": "HalfCheetah-v4",
        "normalize": True,
        "n_envs": 1,
        "policy": "MlpPolicy",
        "n_timesteps": 1_000_000,
        "batch_size": 64,
        "n_steps": 512,
        "gamma": 0.98,
        "learning_rate": 2.0633e-05,
        "ent_coef": 0.000401762,
        "clip_range": 0.1,
        "n_epochs": 20,
        "gae_lambda": 0.92,
        "max_grad_norm": 0.8,
        "vf_coef": 0.58096,
        "policy_kwargs": dict(
            log_std_init=-2,
            ortho_init=False,
            activation_fn="nn.ReLU",
            net_arch=dict(pi=[256, 256], vf=[256, 256]),
        ),
    },
    # The zoo's Ant-v4 entry is its MuJoCo defaults (the tuned Ant block is commented out there):
    # SB3's PPO defaults with VecNormalize, 1 env.
    "Ant-v5": {"zoo_key": "Ant-v4", "normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy"},
}
# The zoo's one entry for every Atari game ("atari" in the same file): AtariWrapper (30 no-ops,
# frame skip 4 with max-pooling, life loss as episode end, FIRE on reset, reward clipping, 84x84
# grayscale), a stack of 4 frames, the Nature CNN. The zoo trains NoFrameskip-v4 ids; for ALE/*-v5
# ids the base env is made with frameskip=1 (the wrapper skips) and keeps v5's sticky actions,
# which Shoal's runs of the same id have too.
ZOO_ATARI: dict[str, Any] = {
    "zoo_key": "atari",
    "env_wrapper": "AtariWrapper",
    "frame_stack": 4,
    "policy": "CnnPolicy",
    "n_envs": 8,
    "n_steps": 128,
    "n_epochs": 4,
    "batch_size": 256,
    "n_timesteps": 10_000_000,
    "learning_rate": "lin_2.5e-4",
    "clip_range": "lin_0.1",
    "vf_coef": 0.5,
    "ent_coef": 0.01,
}
# What the JSON keeps of the config a Shoal run used (its run folder's config.json).
SHOAL_KEYS = (
    "env.recipe",
    "env.num_envs",
    "env.backend",
    "env.num_workers",
    "policy.lstm",
    "policy.hidden_size",
    "policy.obs_norm",
    "train.total_steps",
    "train.batch_size",
    "train.minibatch_size",
    "train.update_epochs",
    "train.learning_rate",
    "train.gamma",
    "train.gae_lambda",
    "train.reward_scale",
    "train.torch_threads",
    "train.precision",
    "train.compile",
    "train.target_score",
)


# ---- names, settings ----


def is_gym(env: str) -> bool:
    return "-v" in env


def is_atari(env: str) -> bool:
    """ALE/Game-v5 and the older GameNoFrameskip-v4 ids."""
    return env.startswith("ALE/") or "NoFrameskip" in env


def has_zoo(env: str) -> bool:
    return env in ZOO or is_atari(env)


def shoal_name(env: str) -> str:
    return f"gym:{env}" if is_gym(env) else env


def methods_for(env: str, references: Sequence[str]) -> list[str]:
    """shoal, then sb3, then zoo where the zoo publishes settings for the env (Atari: the zoo
    only; SB3's default MlpPolicy on 28,224 pixels is no reference)."""
    wanted = ["shoal", *[m for m in REFERENCES if m in references]]
    return [m for m in wanted if (m != "zoo" or has_zoo(env)) and (m != "sb3" or not is_atari(env))]


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    return min(2, available_cores())


def parse_references(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in REFERENCES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected 'none' or a comma list of {', '.join(REFERENCES)}")
    return names


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "stable_baselines3": version("stable-baselines3"),
        "gymnasium": version("gymnasium"),
    }


def clean(value: Any) -> Any:
    """`value` as strict JSON: NaN and infinities become null, NumPy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def learning() -> Any:
    """benchmarks/learning.py (it loads torch: import it only where torch may load)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import learning as module

    return module


# ---- the zoo's settings as SB3 takes them ----


@dataclass
class ZooSetup:
    n_envs: int
    n_timesteps: int
    policy: str
    normalize: dict[str, Any] | None  # VecNormalize's kwargs, None without it
    ppo_kwargs: dict[str, Any]


def zoo_hyperparams(env: str) -> dict[str, Any]:
    """The zoo's entry for `env` as the zoo file writes it (CartPole from learning.py)."""
    hp = dict(ZOO_ATARI if is_atari(env) else ZOO[env])
    if env == "CartPole-v1":
        hp.update({k: v for k, v in learning().SB3_CARTPOLE.items() if k != "env_id"})
    return hp


def resolve_policy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The zoo's policy_kwargs with "nn.<Class>" names turned into torch.nn classes."""
    import torch.nn as nn

    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("nn."):
            value = getattr(nn, value[3:])
        out[key] = value
    return out


def zoo_setup(hp: dict[str, Any]) -> ZooSetup:
    """How the zoo trains with entry `hp`: its envs, step budget, VecNormalize (norm_obs and
    norm_reward on, gamma = the algorithm's) and PPO's kwargs ("lin_X" as linear schedules)."""
    zoo_value = learning().zoo_value
    skip = {"zoo_key", "env_id", "n_envs", "n_timesteps", "policy", "normalize", "policy_kwargs"}
    skip |= {"env_wrapper", "frame_stack"}
    kwargs = {key: zoo_value(value) for key, value in hp.items() if key not in skip}
    if "policy_kwargs" in hp:
        kwargs["policy_kwargs"] = resolve_policy_kwargs(hp["policy_kwargs"])
    normalize = None
    if hp.get("normalize"):
        normalize = {"norm_obs": True, "norm_reward": True, "gamma": float(hp.get("gamma", 0.99))}
    return ZooSetup(
        n_envs=int(hp.get("n_envs", 1)),
        n_timesteps=int(hp["n_timesteps"]),
        policy=str(hp.get("policy", "MlpPolicy")),
        normalize=normalize,
        ppo_kwargs=kwargs,
    )


# ---- Shoal's C envs as an SB3 VecEnv ----


class NativeVecEnvMethods:
    """NativeVecEnv's body: a Shoal C env as an SB3 VecEnv with one SB3 env per agent (the class
    itself, with SB3's VecEnv as its base, is made on first use: SB3 loads torch).

    The C env auto-resets: the obs it returns for a finished agent is already the next episode's
    first, as SB3 expects. SB3 bootstraps only truncated episodes, from
    infos[i]["terminal_observation"]: that is the C env's final_observations row for a
    truncation. For a terminal the true last obs is not kept, so the returned (next episode's)
    obs stands in; SB3 does not read it there. The C buffers are rewritten in place by every
    step, so everything handed out is a copy. Episode returns and lengths are summed here per
    agent and reported as Monitor does (infos[i]["episode"] = {"r", "l"}).
    """

    num_envs: int
    _seeds: list[int | None]

    def __init__(self, name: str, seed: int = 0, num_envs: int = 1, **options: Any) -> None:
        import shoal

        self.env = shoal.make(name, num_envs=num_envs, seed=seed, **options)
        self.render_mode = None
        n = self.env.num_agents
        super().__init__(n, self.env.single_observation_space, self.env.single_action_space)  # type: ignore[call-arg]
        self._returns = np.zeros(n, dtype=np.float64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._actions = np.zeros(self.env.actions.shape, dtype=np.int32)

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self._seeds[0])
        self._reset_seeds()  # type: ignore[attr-defined]
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.env.actions.shape).astype(np.int32)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rewards, terminals, truncations, _ = self.env.step(self._actions)
        obs, rewards = obs.copy(), rewards.astype(np.float32, copy=True)
        dones = terminals | truncations
        self._returns += rewards
        self._lengths += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            truncated = bool(truncations[i] and not terminals[i])
            last = self.env.final_observations[i].copy() if truncated else obs[i].copy()
            episode = {"r": float(self._returns[i]), "l": int(self._lengths[i])}
            infos[i] = {"episode": episode, "terminal_observation": last, "TimeLimit.truncated": truncated}
            self._returns[i], self._lengths[i] = 0.0, 0
        return obs, rewards, dones.copy(), infos

    def close(self) -> None:
        self.env.close()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        method = getattr(self.env, method_name)
        return [method(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


@cache
def native_vec_env_class() -> type:
    """NativeVecEnv(stable_baselines3's VecEnv), with NativeVecEnvMethods' body."""
    from stable_baselines3.common.vec_env import VecEnv

    return type(
        "NativeVecEnv",
        (NativeVecEnvMethods, VecEnv),
        {"__doc__": NativeVecEnvMethods.__doc__, "__module__": __name__},
    )


def native_vec_env(name: str, seed: int = 0, num_envs: int = 1, **options: Any) -> Any:
    """The C env `name` (num_envs copies, the game's `options`) as an SB3 VecEnv of one SB3 env
    per agent."""
    return native_vec_env_class()(name, seed=seed, num_envs=num_envs, **options)


# ---- the workers: one run each, in its own process ----


class ShoalRecorder:
    """Shoal's on_epoch: the curve (wall_time, agent_steps, mean return of the last 100 episodes),
    Shoal's own score_100 beside it, the probe+setup seconds, and the stop at the budget."""

    def __init__(self, budget: float, started: float) -> None:
        self.budget, self.started = budget, started
        self.curve: list[list[float]] = []
        self.score_100: list[float] = []
        self.setup_seconds: float | None = None
        self.last: dict[str, Any] = {}

    def __call__(self, metrics: dict[str, Any]) -> bool:
        if self.setup_seconds is None:
            self.setup_seconds = time.perf_counter() - self.started - metrics["wall_time"]
        # return_100 is the return (sum of rewards, what SB3 reports); score_100 is the env's
        # "score", which differs in games that define one (points won in pong, length in snake).
        wall = float(metrics["wall_time"])
        self.curve.append([wall, int(metrics["agent_steps"]), float(metrics["return_100"])])
        self.score_100.append(float(metrics.get("score_100", math.nan)))
        self.last = metrics
        return wall < self.budget


def shoal_config(
    env: str, seed: int, threads: int | None, flags: Sequence[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """The config `shoal train ENV --train.seed SEED [--train.torch-threads T]` builds (the CLI's
    own derive step), with the OpenMP wait policy put into the environment as the CLI does."""
    from shoal.cli import check_env, prepare_threads, recipe_deriver
    from shoal.core.config import load_config

    overrides = ["--train.seed", str(seed), *flags]
    if threads is not None:
        overrides += ["--train.torch_threads", str(threads)]
    derived: dict[str, Any] = {}
    cfg = load_config(shoal_name(env), overrides, derive=recipe_deriver(derived))
    cfg.run.quiet = True
    if cfg.train.processes > 1:
        raise RuntimeError(f"{env}: train.processes = {cfg.train.processes}; the budget stop needs 1")
    prepare_threads(cfg)
    check_env(cfg.env.name, cfg.env.options)
    return cfg, {key: d.why for key, d in derived.items()}


def dotted(data: dict[str, Any], key: str) -> Any:
    section, name = key.split(".", 1)
    return data.get(section, {}).get(name)


def run_shoal(
    env: str, seed: int, budget: float, threads: int | None, started: float, flags: Sequence[str] = ()
) -> dict[str, Any]:
    cfg, derived = shoal_config(env, seed, threads, flags)
    from shoal.train import train  # torch loads here, after the wait policy is set

    recorder = ShoalRecorder(budget, started)
    with tempfile.TemporaryDirectory(prefix="suite_shoal_") as run_root:
        cfg.run.dir = run_root
        result = train(cfg, on_epoch=recorder)
        config = json.loads((Path(result.run_dir) / "config.json").read_text())
    last, curve = recorder.last, recorder.curve
    wall = curve[-1][0] if curve else 0.0
    stopped_by = "budget" if wall >= budget else "target" if result.time_to_target is not None else "steps"
    return {
        "curve": curve,
        "score_100": recorder.score_100,
        "setup_seconds": recorder.setup_seconds,
        "stopped_by": stopped_by,
        "torch_threads": last.get("torch_threads"),
        "omp_wait_policy": last.get("omp_wait_policy"),
        "settings": {key: dotted(config, key) for key in SHOAL_KEYS},
        "derived": derived,
        "threads_explicit": threads is not None,
    }


def sb3_env(method: str, env: str, seed: int) -> tuple[Any, str, dict[str, Any], int, dict[str, Any]]:
    """(vec env, policy, PPO kwargs, total_timesteps, settings to record) of an SB3 run."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    if method == "sb3" and not is_gym(env):
        return native_vec_env(env, seed=seed), "MlpPolicy", {}, SB3_FOREVER, {"native_num_envs": 1}
    if method == "sb3":
        return make_vec_env(env, n_envs=1, seed=seed), "MlpPolicy", {}, SB3_FOREVER, {}
    hp = zoo_hyperparams(env)
    setup = zoo_setup(hp)
    if is_atari(env):
        vec = zoo_atari_env(env, seed, setup.n_envs)
        return vec, setup.policy, setup.ppo_kwargs, setup.n_timesteps, {"zoo": hp}
    vec = make_vec_env(env, n_envs=setup.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    if setup.normalize is not None:
        vec = VecNormalize(vec, **setup.normalize)
    return vec, setup.policy, setup.ppo_kwargs, setup.n_timesteps, {"zoo": hp}


def zoo_atari_env(env: str, seed: int, n_envs: int) -> Any:
    """The zoo's Atari envs: AtariWrapper over each, 8 in a DummyVecEnv, a stack of 4 frames."""
    from stable_baselines3.common.atari_wrappers import AtariWrapper
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    from shoal.atari import check_game

    check_game(env)  # registers ale-py's ids
    env_kwargs = {"frameskip": 1} if env.startswith("ALE/") else {}
    vec = make_vec_env(
        env, n_envs, seed=seed, vec_env_cls=DummyVecEnv, wrapper_class=AtariWrapper, env_kwargs=env_kwargs
    )
    return VecFrameStack(vec, n_stack=ZOO_ATARI["frame_stack"])


def budget_callback(tracker: Any, budget: float) -> Any:
    """SB3's callback: its clock starts at training start; it feeds every step's infos to the
    tracker, adds a curve point at every rollout end and stops at the first step past the budget."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Budget(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[list[float]] = []
            self.start = math.nan
            self.stopped = False

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def point(self) -> None:
            elapsed = time.perf_counter() - self.start
            self.curve.append([elapsed, int(self.model.num_timesteps), tracker.mean()])

        def _on_step(self) -> bool:
            elapsed = time.perf_counter() - self.start
            tracker.update(self.locals["infos"], self.num_timesteps, elapsed)
            if elapsed >= budget:
                self.stopped = True
                self.point()
                return False
            return True

        def _on_rollout_end(self) -> None:
            self.point()

    return Budget()


def run_sb3(method: str, env: str, seed: int, budget: float, threads: int, started: float) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from stable_baselines3 import PPO

    vec, policy, kwargs, total, settings = sb3_env(method, env, seed)
    tracker = learning().EpisodeTracker(target=None)
    callback = budget_callback(tracker, budget)
    model = PPO(policy, vec, seed=seed, device="cpu", **kwargs)
    model.learn(total_timesteps=total, callback=callback)
    if not callback.stopped:
        callback.point()
    vec.close()
    settings.update(
        n_envs=vec.num_envs,
        n_steps=model.n_steps,
        batch_size=model.batch_size,
        n_epochs=model.n_epochs,
        learning_rate=model.learning_rate if isinstance(model.learning_rate, float) else "schedule",
        gamma=model.gamma,
        gae_lambda=model.gae_lambda,
        normalize=type(vec).__name__ == "VecNormalize",
        total_timesteps=total,
    )
    return {
        "curve": callback.curve,
        "episodes": tracker.episodes,
        "setup_seconds": callback.start - started,
        "stopped_by": "budget" if callback.stopped else "steps",
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default"),
        "settings": settings,
    }


def is_missing_dependency(error: BaseException) -> bool:
    try:
        from gymnasium.error import DependencyNotInstalled
    except ImportError:
        return False
    return isinstance(error, DependencyNotInstalled)


def worker_main(
    method: str,
    env: str,
    seed: int,
    budget: float,
    outfile: Path,
    threads: int | None,
    flags: Sequence[str] = (),
) -> int:
    """One run; its record goes to `outfile`. A missing Box2D/MuJoCo exits 3 with a record
    saying so; any other error is a crash (traceback on stderr, no record)."""
    started = time.perf_counter()
    try:
        if method == "shoal":
            result = run_shoal(env, seed, budget, threads, started, flags)
        else:
            result = run_sb3(method, env, seed, budget, threads or default_threads(), started)
    except Exception as e:
        if not is_missing_dependency(e):
            raise
        write_json(outfile, {"status": "missing_dependency", "message": str(e)})
        return MISSING_DEPENDENCY_EXIT
    curve = result["curve"]
    wall = curve[-1][0] if curve else 0.0
    steps = curve[-1][1] if curve else 0
    result.update(
        status="ok",
        wall_time=wall,
        agent_steps=steps,
        sps=steps / wall if wall > 0 else None,
        final_return=curve[-1][2] if curve else None,
    )
    write_json(outfile, result)
    return 0


# ---- the parent: launch, collect, report ----


def as_text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def launch(
    method: str,
    env: str,
    seed: int,
    budget: float,
    threads: int | None,
    logs: Path,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one worker; its record, with status ok, missing_dependency or crash."""
    record: dict[str, Any] = {"env": env, "method": method, "seed": seed}
    log = logs / f"{env.replace('/', '_')}_{method}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="suite_worker_") as tmp:
        outfile = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, env, str(seed)]
        cmd += [repr(budget), str(outfile)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if flags:
            cmd += ["--shoal-flags", json.dumps(list(flags))]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=3 * budget + 600)
            output, code = as_text(proc.stdout) + as_text(proc.stderr), proc.returncode
        except subprocess.TimeoutExpired as e:
            output = as_text(e.stdout) + as_text(e.stderr) + f"\ntimed out after {e.timeout:.0f} s"
            code = -1
        log.write_text(output)
        if outfile.is_file() and code in (0, MISSING_DEPENDENCY_EXIT):
            record.update(json.loads(outfile.read_text()))
            return record
    tail = "\n".join(output.strip().splitlines()[-15:])
    record.update(status="crash", exit_code=code, stderr_tail=tail)
    return record


def fmt(value: float | None, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def run_line(record: dict[str, Any]) -> str:
    head = f"{record['env']:<25} {record['method']:<5} seed {record['seed']}"
    if record.get("status") != "ok":
        return f"{head}  {record.get('status')}"
    extra = (
        f"  probe+setup {fmt(record.get('setup_seconds'), '.1f')} s" if record["method"] == "shoal" else ""
    )
    return (
        f"{head}  steps {record['agent_steps']:>11,}  {fmt(record['sps'], ',.0f'):>9} steps/s  "
        f"return_100 {fmt(record['final_return'], '.4g'):>8}  ({record['stopped_by']} at "
        f"{record['wall_time']:.1f} s){extra}"
    )


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(METHODS)}, got {text!r}")
    return methods


def replace_run(data: dict[str, Any], record: dict[str, Any]) -> None:
    """Put `record` in place of the run of the same env, method and seed (appended if none)."""
    same = ("env", "method", "seed")
    for i, old in enumerate(data["runs"]):
        if all(old.get(k) == record.get(k) for k in same):
            data["runs"][i] = record
            return
    data["runs"].append(record)


def run_env(env: str, args: argparse.Namespace, data: dict[str, Any], out: Path) -> None:
    """Every seed and method of `env` (only those of --rerun, when given), saving suite.json
    after each run; a missing Box2D/MuJoCo ends the env early, recorded as skipped."""
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in methods_for(env, args.references):
            if args.rerun is not None and method not in args.rerun:
                continue
            record = launch(method, env, seed, args.budget, args.threads, out / "logs")
            if record["status"] == "missing_dependency":
                message = f"{env}: {record.get('message')}; install it with `{ENVS_EXTRA}`"
                print(f"skipped {message}", flush=True)
                data["skipped"][env] = message
                write_json(out / "suite.json", data)
                return
            record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            replace_run(data, record)
            print(run_line(record), flush=True)
            if record["status"] == "crash":
                print(f"  worker crashed (exit {record['exit_code']}); stderr tail:", flush=True)
                print("    " + record["stderr_tail"].replace("\n", "\n    "), flush=True)
            write_json(out / "suite.json", data)


# ---- the summary: time to SB3's final return, verdicts ----


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def median(values: Sequence[float | None]) -> float | None:
    known = [float(v) for v in values if finite(v)]
    return statistics.median(known) if known else None


def time_to_reach(curve: Sequence[Sequence[Any]], target: float) -> float | None:
    """The first wall time at which the curve's return is at least `target`; None if never."""
    for wall, _steps, value in curve:
        if finite(value) and value >= target:
            return float(wall)
    return None


def median_time(times: Sequence[float | None]) -> float | None:
    """Median over seeds, a seed that never reached counting as infinitely slow; None = never."""
    if not times:
        return None
    value = statistics.median([math.inf if t is None else t for t in times])
    return value if math.isfinite(value) else None


def verdict(
    time_to_sb3: float | None, budget: float, shoal_final: float | None, sb3_final: float | None
) -> str:
    if sb3_final is None or shoal_final is None:
        return "n/a"
    if time_to_sb3 is not None and time_to_sb3 <= budget / 3:
        return "3x"
    return "above" if shoal_final > sb3_final else "below"


@dataclass
class Row:
    env: str
    sb3_final: float | None
    zoo_final: float | None
    shoal_final: float | None
    time_to_sb3: float | None
    reached: bool  # some shoal seed was compared (False: no SB3 final to reach)
    speedup: float | None
    verdict: str
    sb3_sps: float | None
    shoal_sps: float | None
    shoal_stops: str = ""  # how Shoal's runs ended before the budget ("target", "steps"), if any


def summarize(env: str, runs: Sequence[dict[str, Any]], budget: float) -> Row:
    """The env's row from its finished runs (medians over seeds)."""

    def of(method: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["env"] == env and r["method"] == method and r.get("status") == "ok"]

    shoal, sb3, zoo = of("shoal"), of("sb3"), of("zoo")
    sb3_final = median([r.get("final_return") for r in sb3])
    shoal_final = median([r.get("final_return") for r in shoal])
    time_to_sb3 = None
    if sb3_final is not None and shoal:
        time_to_sb3 = median_time([time_to_reach(r["curve"], sb3_final) for r in shoal])
    return Row(
        env=env,
        sb3_final=sb3_final,
        zoo_final=median([r.get("final_return") for r in zoo]),
        shoal_final=shoal_final,
        time_to_sb3=time_to_sb3,
        reached=sb3_final is not None and bool(shoal),
        speedup=budget / time_to_sb3 if time_to_sb3 else None,
        verdict=verdict(time_to_sb3, budget, shoal_final, sb3_final) if sb3 else "-",
        sb3_sps=median([r.get("sps") for r in sb3]),
        shoal_sps=median([r.get("sps") for r in shoal]),
        shoal_stops=",".join(
            sorted({r["stopped_by"] for r in shoal if r.get("stopped_by", "budget") != "budget"})
        ),
    )


HEADER = [
    "env",
    "SB3 final",
    "Zoo final",
    "Shoal final",
    "Shoal t to SB3 final",
    "speed-up",
    "verdict",
    "SB3 steps/s",
    "Shoal steps/s",
]


def row_cells(row: Row) -> list[str]:
    reach = "never" if row.reached else "-"
    if row.time_to_sb3 is not None:
        reach = f"{row.time_to_sb3:.1f} s"
    return [
        row.env,
        fmt(row.sb3_final, ".1f"),
        fmt(row.zoo_final, ".1f"),
        fmt(row.shoal_final, ".1f") + (f" ({row.shoal_stops})" if row.shoal_stops else ""),
        reach,
        "-" if row.speedup is None else f"{row.speedup:.1f}x",
        row.verdict,
        fmt(row.sb3_sps, ",.0f"),
        fmt(row.shoal_sps, ",.0f"),
    ]


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADER, *[row_cells(r) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def envs_of(data: dict[str, Any]) -> list[str]:
    seen = list(data["settings"]["envs"])
    return [e for e in seen if any(r["env"] == e for r in data["runs"])]


def report_md(data: dict[str, Any], rows: Sequence[Row]) -> str:
    s = data["settings"]
    m = s["machine"]
    lines = [
        "# Shoal (no flags) vs Stable-Baselines3 PPO at the same wall-clock budget",
        "",
        f"Budget {s['budget']:g} s per run, seeds {s['seeds']}, SB3 torch threads {s['threads']}; "
        f"{m['platform']}, {m['available_cores']} cores, torch {m['torch']}, SB3 {m['stable_baselines3']}.",
        "Returns: mean of the last 100 training episodes (true env return), medians over seeds.",
        f"Verdict: 3x = Shoal reaches SB3-defaults' final return within budget/3 ({s['budget'] / 3:g} s); "
        "else above/below = Shoal's final return vs SB3's. Shoal final (target) / (steps): its recipe's "
        "train.target_score / train.total_steps ended the run before the budget.",
        "",
        markdown_table(rows),
    ]
    for env, message in data.get("skipped", {}).items():
        lines.append(f"\nSkipped {env}: {message}")
    return "\n".join(lines) + "\n"


# ---- the plot ----

COLORS = {"shoal": "tab:blue", "sb3": "tab:orange", "zoo": "tab:green"}
LABELS = {"shoal": "Shoal (no flags)", "sb3": "SB3 PPO defaults", "zoo": "SB3 PPO, RL Zoo settings"}


def seed_median(curves: Sequence[Sequence[Sequence[Any]]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The seeds' median return on a common time grid (up to the shortest run)."""
    usable = [[(p[0], p[2]) for p in c if finite(p[2])] for c in curves]
    usable = [c for c in usable if len(c) >= 2]
    if len(usable) < 2:
        return None
    grid = np.linspace(max(c[0][0] for c in usable), min(c[-1][0] for c in usable), 200)
    stack = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in usable])
    return grid, np.median(stack, axis=0)


def draw_env(ax: Any, env: str, runs: Sequence[dict[str, Any]], row: Row, budget: float) -> None:
    for method in METHODS:
        mine = [r for r in runs if r["env"] == env and r["method"] == method and r.get("status") == "ok"]
        middle = seed_median([r["curve"] for r in mine])
        for i, run in enumerate(mine):
            points = [p for p in run["curve"] if finite(p[2])]
            label = LABELS[method] if i == 0 and middle is None else None
            ax.plot([p[0] for p in points], [p[2] for p in points], color=COLORS[method], lw=0.8, label=label)
        if middle is not None:
            ax.plot(*middle, color=COLORS[method], lw=2.2, label=f"{LABELS[method]} (median)")
    if row.sb3_final is not None:
        ax.axhline(row.sb3_final, color=COLORS["sb3"], ls="--", lw=0.9)
    ax.axvline(budget / 3, color="grey", ls=":", lw=0.9)
    ax.set_title(f"{env}: {row.verdict}")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("mean return, last 100 episodes")


def plot_suite(data: dict[str, Any], rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = float(data["settings"]["budget"])
    cols = min(3, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        draw_env(ax, row.env, data["runs"], row, budget)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(f"Shoal vs SB3 PPO, {budget:g} s per run (dashed: SB3 final; dotted: budget/3)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(data: dict[str, Any], out: Path) -> None:
    """Print the table and write suite.md and suite.png into `out`."""
    budget = float(data["settings"]["budget"])
    rows = [summarize(env, data["runs"], budget) for env in envs_of(data)]
    print()
    print(text_table(rows))
    for env, message in data.get("skipped", {}).items():
        print(f"skipped {message}" if message.startswith(env) else f"skipped {env}: {message}")
    (out / "suite.md").write_text(report_md(data, rows))
    plot_suite(data, rows, out / "suite.png")
    print(f"wrote {out / 'suite.json'}, {out / 'suite.md'}, {out / 'suite.png'}", flush=True)


# ---- the command line ----


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "envs", nargs="*", help="Gymnasium ids (NAME-vN) and Shoal C envs; default: the suite"
    )
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="wall seconds per run")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per env and method")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--out", default="benchmarks/results/suite", help="folder for JSON, PNG and table")
    parser.add_argument(
        "--references",
        type=parse_references,
        default=list(REFERENCES),
        help="sb3,zoo (default), sb3, zoo or none",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: SB3 min(2, cores); Shoal its own)"
    )
    parser.add_argument("--plot-only", metavar="DIR", help="redraw table and plots from DIR/suite.json")
    parser.add_argument(
        "--rerun",
        type=parse_methods,
        default=None,
        metavar="METHODS",
        help="run only these methods (comma list of shoal,sb3,zoo) of the named envs again, "
        "replacing their runs in --out's suite.json (e.g. one disturbed by another process)",
    )
    parser.add_argument("--worker", nargs=5, metavar="X", help=argparse.SUPPRESS)
    # Config flags for a Shoal worker (benchmarks/atari.py's `-- FLAGS`), as a JSON list.
    parser.add_argument("--shoal-flags", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rerun is not None and not args.envs:
        parser.error("--rerun needs the envs whose runs it repeats")
    if args.budget <= 0 or args.seeds < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--budget, --seeds and --threads must be positive")
    return args


def rerun(args: argparse.Namespace, envs: list[str], out: Path) -> int:
    """--rerun: repeat some methods' runs into an existing suite.json, noting which and when."""
    path = out / "suite.json"
    if not path.is_file():
        print(f"--rerun: no {path} to update (run the suite with --out {out} first)")
        return 2
    data = json.loads(path.read_text())
    if args.budget != data["settings"]["budget"]:
        print(f"--rerun: --budget {args.budget:g} differs from the suite's {data['settings']['budget']:g}")
        return 2
    data["settings"].setdefault("reruns", []).append(
        {"envs": envs, "methods": args.rerun, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    )
    for env in envs:
        run_env(env, args, data, out)
    report(data, out)
    return 1 if any(r.get("status") == "crash" for r in data["runs"]) else 0


def run_suite(args: argparse.Namespace) -> int:
    if args.references and importlib.util.find_spec("stable_baselines3") is None:
        print(SB3_MISSING, flush=True)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    envs = args.envs or DEFAULT_ENVS
    if args.rerun is not None:
        return rerun(args, envs, out)
    data: dict[str, Any] = {
        "settings": {
            "envs": envs,
            "budget": args.budget,
            "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
            "threads": args.threads or default_threads(),
            "threads_explicit": args.threads is not None,
            "references": args.references,
            "machine": machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "runs": [],
        "skipped": {},
    }
    for env in envs:
        run_env(env, args, data, out)
    report(data, out)
    crashed = [r for r in data["runs"] if r.get("status") == "crash"]
    for r in crashed:
        print(f"crashed: {r['env']} {r['method']} seed {r['seed']} (log: {out / 'logs'})")
    return 1 if crashed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        method, env, seed, budget, outfile = args.worker
        flags = json.loads(args.shoal_flags) if args.shoal_flags else []
        return worker_main(method, env, int(seed), float(budget), Path(outfile), args.threads, flags)
    if args.plot_only:
        folder = Path(args.plot_only)
        if not (folder / "suite.json").is_file():
            print(f"--plot-only: no {folder / 'suite.json'} (written by a run with --out {folder})")
            return 2
        report(json.loads((folder / "suite.json").read_text()), folder)
        return 0
    return run_suite(args)


if __name__ == "__main__":
    raise SystemExit(main())
