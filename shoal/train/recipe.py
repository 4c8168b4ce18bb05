"""A recipe derived from the env, for the envs no ``shoal/configs/<env>.toml`` names.

A recipe file is tuned by hand for one env; this recipe follows rules from what every env
shows: its spaces, its agents per env, its speed (a short timed stepping with random actions)
and its episode length (its time limit, else the random episodes of that stepping). There are no
per-env cases: two envs that look alike get the same recipe. Every derived value carries the
reason it was chosen, which ``shoal config ENV`` prints above it.

Keys a config file or flag set are never derived, and the rest of the geometry is derived around
them (``--env.num-envs 4`` gives a batch of 4 envs' steps). ``load_config(..., derive=derive_into)``
knows those keys exactly; ``train(cfg)`` on a config still marked ``env.recipe = "auto"`` treats
every value that differs from the defaults as set.

Nothing here imports torch: ``shoal train`` derives before torch loads (torch's OpenMP wait
policy is fixed when it is imported).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium
import numpy as np

from shoal.core.config import CONFIG_DIR, Config, ConfigError, env_file_stem, pixel_mode, set_key
from shoal.emulation import structured_observation_space
from shoal.encoders import choose_encoder
from shoal.envs.registry import make

# Seconds of random stepping that measure the env's speed and episode length.
PROBE_SECONDS = 0.5
# Random actions drawn ahead of the timed stepping, so the timing measures the env alone.
PROBE_ACTION_BLOCK = 256
# A vector step of the serial backend that takes at least this long is worth spreading over
# worker processes: their send/receive costs on the order of 0.1 ms per step.
MULTIPROCESSING_STEP_SECONDS = 1e-3
# The smallest minibatch worth a gradient step (below it, fixed per-step costs dominate).
MIN_MINIBATCH = 64
# Frames per forward/backward of a CNN (larger minibatches accumulate gradients): 1024 frames of
# 84x84 keep the Nature CNN's activations within a few hundred MB.
IMAGE_MAX_MINIBATCH = 1024
IMAGE_TOTAL_STEPS = 10_000_000


class Derived(NamedTuple):
    """A derived config value and why it was chosen."""

    value: Any
    why: str


@dataclass(frozen=True)
class Tier:
    """Rollout geometry for a range of env speeds: samples from a slow env are expensive, so
    they are reused (many passes, small minibatches); a fast env's are cheap (big batches)."""

    name: str
    below_sps: float  # the tier holds envs slower than this (agent steps/s of one env)
    agents: int  # agents stepped together
    batch: int  # agent steps per rollout
    minibatches: int
    epochs: int
    learning_rate: float


TIERS = (
    Tier("slow", 50_000, 8, 2048, 32, 10, 3e-4),
    Tier("medium", 200_000, 16, 8192, 8, 4, 1e-3),
    Tier("fast", math.inf, 64, 32_768, 4, 2, 2e-3),
)
# A frame through a CNN costs ~1000x a state vector through an MLP, whatever the env's speed, so
# image envs get the geometry of the Atari PPO literature (Schulman et al. 2017, CleanRL's
# ppo_atari): rollouts of 128 steps, 4 passes. Adam's step is 4x the literature's 2.5e-4: on ALE
# Pong that reached in 12 minutes the score 2.5e-4 reached in 30 (docs/pixels.md), and a 2-core
# CPU's budget is counted in minutes, not in frames. Minibatches of 128 frames (the literature's
# 256) give twice the gradient steps for the same CNN work (docs/pixels.md).
IMAGE_TIER = Tier("pixels", math.inf, 16, 2048, 16, 4, 1e-3)


@dataclass(frozen=True)
class EnvProfile:
    """What the recipe reads from the env."""

    name: str
    observation_space: gymnasium.spaces.Box
    action_space: gymnasium.Space
    agents_per_env: int
    steps_per_second: float  # agent steps per second of one env stepped in this process
    episode_length: float
    episode_length_source: str
    mean_abs_reward: float  # per agent step, under random actions
    cores: int
    # The space the rows were flattened from (an image Box, a Dict holding one); None = the
    # observation space itself.
    structured_space: gymnasium.Space | None = None

    def encoder(self) -> str:
        """What policy.encoder = "auto" resolves to for this env: "mlp", "nature" or "impala"."""
        space = self.observation_space if self.structured_space is None else self.structured_space
        return choose_encoder("auto", space, int(np.prod(self.observation_space.shape))).name


def has_recipe_file(env_name: str, options: dict[str, Any] | None = None) -> bool:
    """Whether shoal/configs holds the env's recipe and it applies (not in a native game's pixel
    mode, for which the recipe file's vector-observation settings do not hold)."""
    if pixel_mode(options or {}):
        return False
    return (CONFIG_DIR / f"{env_file_stem(env_name)}.toml").is_file()


def check_spaces(env_name: str, observation_space: gymnasium.Space, action_space: gymnasium.Space) -> None:
    """ConfigError naming the env when the policy cannot read its observations or produce its actions."""
    if not isinstance(observation_space, gymnasium.spaces.Box):
        raise ConfigError(
            f"env '{env_name}' has observation space {observation_space}; the policy reads a flat Box"
        )
    supported = isinstance(action_space, (gymnasium.spaces.Discrete, gymnasium.spaces.MultiDiscrete)) or (
        isinstance(action_space, gymnasium.spaces.Box) and np.issubdtype(action_space.dtype, np.floating)
    )
    if not supported:
        raise ConfigError(
            f"env '{env_name}' has action space {action_space}; the policy produces Discrete, MultiDiscrete "
            "or float Box actions"
        )


# ---- measuring the env ----


def probe_env(
    name: str, options: dict[str, Any] | None = None, seed: int = 0, seconds: float = PROBE_SECONDS
) -> EnvProfile:
    """Build one env of `name`, step it with random actions for `seconds`, and describe it."""
    env = make(name, num_envs=1, seed=seed, num_threads=1, **dict(options or {}))
    try:
        check_spaces(name, env.single_observation_space, env.single_action_space)
        steps, elapsed, abs_reward = _timed_steps(env, seed, seconds)
        log = env.log()
        length, source = _episode_length(env, log, steps)
        agent_steps = steps * env.num_agents
        return EnvProfile(
            name=name,
            observation_space=env.single_observation_space,
            action_space=env.single_action_space,
            agents_per_env=env.num_agents,
            steps_per_second=agent_steps / max(elapsed, 1e-9),
            episode_length=length,
            episode_length_source=source,
            mean_abs_reward=abs_reward / max(agent_steps, 1),
            cores=available_cores(),
            structured_space=structured_observation_space(env),
        )
    finally:
        env.close()


def _timed_steps(env: Any, seed: int, seconds: float) -> tuple[int, float, float]:
    """(steps, seconds they took, sum of |reward|) of random stepping for about `seconds`."""
    rng = np.random.default_rng(seed)
    actions = random_actions(env.single_action_space, env.num_agents, PROBE_ACTION_BLOCK, rng)
    env.reset(seed=seed)
    steps, abs_reward, elapsed = 0, 0.0, 0.0
    start = time.perf_counter()
    while elapsed < seconds:
        _, rewards, _, _, _ = env.step(actions[steps % PROBE_ACTION_BLOCK])
        abs_reward += float(np.abs(rewards).sum())
        steps += 1
        elapsed = time.perf_counter() - start
    return steps, elapsed, abs_reward


def random_actions(space: gymnasium.Space, agents: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` steps of uniformly random actions for `agents` agents, in the contract's layout."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return rng.integers(0, int(space.n), size=(count, agents)).astype(np.int32)
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        return rng.integers(0, nvec, size=(count, agents, nvec.size)).astype(np.int32)
    low = np.asarray(space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(space.high, dtype=np.float64).reshape(-1)
    # Unbounded dimensions get a standard normal draw, the policy's own initial spread.
    bounded = np.isfinite(low) & np.isfinite(high)
    shape = (count, agents, low.size)
    uniform = rng.uniform(np.where(bounded, low, 0.0), np.where(bounded, high, 1.0), shape)
    normal = rng.standard_normal(shape)
    return np.where(bounded, uniform, normal).astype(np.float32)


def _episode_length(env: Any, log: dict[str, Any], steps: int) -> tuple[float, str]:
    """The env's time limit where it has one (Gymnasium's TimeLimit), else the mean length of the
    random episodes, else the stepped length as a lower bound."""
    limit = time_limit(env)
    if limit:
        return float(limit), "its time limit"
    if log and log.get("episodes", 0) > 0 and math.isfinite(float(log.get("episode_length", math.nan))):
        return float(log["episode_length"]), "the mean of random-action episodes"
    return float(steps), "no random-action episode ended within the probe"


def time_limit(env: Any) -> int | None:
    """max_episode_steps of the first wrapped Gymnasium env's spec, if any."""
    for inner in list(getattr(env, "envs", ()))[:1]:
        spec = getattr(inner, "spec", None)
        steps = getattr(spec, "max_episode_steps", None)
        if isinstance(steps, int) and steps > 0:
            return steps
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- the rules ----


def derive(profile: EnvProfile, cfg: Config, explicit: frozenset[str] = frozenset()) -> dict[str, Derived]:
    """The derived values of every key not in `explicit` (whose values `cfg` holds)."""
    values: dict[str, Derived] = {}
    values.update(_policy(profile, cfg, explicit))
    # Settled values feed the later rules (the geometry needs the segment length, for one).
    merged = _with(cfg, {key: d for key, d in values.items() if key not in explicit})
    values.update(_geometry(profile, merged, explicit))
    values.update(_normalization(profile))
    values.update(_discount(profile))
    values.update(_losses(profile))
    return {key: d for key, d in values.items() if key not in explicit}


def _with(cfg: Config, values: dict[str, Derived]) -> Config:
    out = cfg.copy()
    for key, d in values.items():
        set_key(out, key, d.value)
    return out


def _policy(profile: EnvProfile, cfg: Config, explicit: frozenset[str]) -> dict[str, Derived]:
    encoder = profile.encoder()
    values = _image_policy(profile, encoder) if encoder != "mlp" else _mlp_policy(profile)
    values["policy.lstm"] = Derived(
        False, "feed-forward: the observation is taken to be the state (set policy.lstm = true for memory)"
    )
    lstm = cfg.policy.lstm if "policy.lstm" in explicit else False
    if lstm:
        values["train.bptt_horizon"] = Derived(16, "the LSTM learns from segments of 16 steps")
    else:
        values["train.bptt_horizon"] = Derived(1, "no memory: minibatches draw single steps, not segments")
    return values


def _mlp_policy(profile: EnvProfile) -> dict[str, Derived]:
    obs_size = int(np.prod(profile.observation_space.shape))
    width = 64 if obs_size <= 256 else 256
    return {
        "policy.hidden_size": Derived(width, f"an MLP this wide reads {obs_size} observation numbers"),
        "policy.num_layers": Derived(2, "two hidden layers, the usual MLP for state observations"),
        "policy.activation": Derived("tanh", "bounded activations keep an MLP with orthogonal init stable"),
    }


def _image_policy(profile: EnvProfile, encoder: str) -> dict[str, Derived]:
    space = profile.observation_space if profile.structured_space is None else profile.structured_space
    frames = f"image observations ({space}) go through the {encoder} CNN (policy.encoder = auto)"
    return {
        "policy.hidden_size": Derived(512, f"{frames}, then 512 features, as in the Nature DQN"),
        "train.max_minibatch_size": Derived(
            IMAGE_MAX_MINIBATCH,
            f"at most {IMAGE_MAX_MINIBATCH} frames per forward/backward keeps the CNN's activations small",
        ),
        "train.precision": Derived(
            "auto", "convolutions dominate the cost: bfloat16 where the hardware multiplies it natively"
        ),
        "train.lr_schedule": Derived("linear", "Adam's step decays linearly to 0, as in Atari PPO papers"),
        "train.clip_coef": Derived(0.1, "the ratio clip of the Atari PPO papers for CNN policies"),
        "train.total_steps": Derived(
            IMAGE_TOTAL_STEPS,
            "the Atari PPO budget of 10M agent steps (40M frames at frame skip 4): the PPO paper's,"
            " CleanRL's ppo_atari's and the RL Zoo's; the step decays over it",
        ),
    }


def tier_of(steps_per_second: float) -> Tier:
    return next(t for t in TIERS if steps_per_second < t.below_sps)


def _geometry(profile: EnvProfile, cfg: Config, explicit: frozenset[str]) -> dict[str, Derived]:
    if profile.encoder() != "mlp":
        tier = IMAGE_TIER
        speed = "image observations: the CNN's cost, not the env's speed, sets the geometry"
    else:
        tier = tier_of(profile.steps_per_second)
        speed = f"one env steps {profile.steps_per_second:,.0f} agent steps/s here ({tier.name})"
    t = cfg.train
    values: dict[str, Derived] = {}
    num_envs = cfg.env.num_envs
    if "env.num_envs" not in explicit:
        processes = max(1, t.processes)
        num_envs = max(1, tier.agents // profile.agents_per_env)
        num_envs = processes * math.ceil(num_envs / processes)
        values["env.num_envs"] = Derived(num_envs, f"{speed}: {tier.agents} agents amortize each policy step")
    agents = num_envs * profile.agents_per_env
    batch = t.batch_size
    if "train.batch_size" not in explicit:
        steps = t.bptt_horizon * max(1, math.ceil(tier.batch / agents / t.bptt_horizon))
        batch = agents * steps
        values["train.batch_size"] = Derived(
            batch, f"{speed}: rollouts of {steps} steps x {agents} agents (~{tier.batch:,} samples)"
        )
    if "train.minibatch_size" not in explicit:
        count = minibatch_count(batch, t.bptt_horizon, tier.minibatches)
        values["train.minibatch_size"] = Derived(batch // count, f"{speed}: {count} minibatches per pass")
    values["train.update_epochs"] = Derived(tier.epochs, f"{speed}: each sample is used {tier.epochs} times")
    values["train.learning_rate"] = Derived(
        tier.learning_rate, f"Adam's step for {tier.name} envs' minibatches"
    )
    values.update(_backend(profile, num_envs, explicit))
    return values


def minibatch_count(batch: int, segment: int, wanted: int) -> int:
    """The most minibatches, at most `wanted`, that cut `batch` into equal whole segments of at
    least MIN_MINIBATCH steps (1 when none does)."""
    segments = max(1, batch // segment)
    for count in range(min(wanted, segments), 1, -1):
        if segments % count == 0 and batch // count >= MIN_MINIBATCH:
            return count
    return 1


def _backend(profile: EnvProfile, num_envs: int, explicit: frozenset[str]) -> dict[str, Derived]:
    """Worker processes when a serial vector step would be long enough to pay for them. (EnvPool,
    env.backend = "envpool", trains ALE Pong 1.19x faster in steps/s, but in 3 seeds it learned
    less per frame and no more in 30 minutes, so it is never derived; docs/pixels.md.)"""
    step_seconds = num_envs * profile.agents_per_env / profile.steps_per_second
    workers = max(w for w in range(1, min(profile.cores, num_envs) + 1) if num_envs % w == 0)
    if "env.backend" in explicit or "env.num_workers" in explicit:
        return {}
    if workers >= 2 and step_seconds >= MULTIPROCESSING_STEP_SECONDS:
        why = f"a step of {num_envs} envs takes ~{step_seconds * 1e3:.1f} ms: {workers} processes share it"
        return {
            "env.backend": Derived("multiprocessing", why),
            "env.num_workers": Derived(workers, f"one per core ({profile.cores} cores)"),
        }
    why = (
        f"a step of {num_envs} envs takes ~{step_seconds * 1e3:.2f} ms, too short to pay for worker processes"
    )
    return {"env.backend": Derived("serial", why), "env.num_workers": Derived(1, "serial: one process")}


def _normalization(profile: EnvProfile) -> dict[str, Derived]:
    obs, act = profile.observation_space, profile.action_space
    continuous = isinstance(act, gymnasium.spaces.Box)
    unbounded = not (np.isfinite(obs.low).all() and np.isfinite(obs.high).all())
    if obs.dtype == np.uint8:
        obs_norm = Derived(False, "uint8 observations are already scaled to [0, 1]")
    elif unbounded or continuous:
        reason = "unbounded observations" if unbounded else "continuous control"
        obs_norm = Derived(True, f"{reason}: running mean/std puts every feature on the same scale")
    else:
        obs_norm = Derived(False, "bounded observations in a discrete-action env")
    if continuous:
        scale = Derived(True, "continuous control: rewards in the env's units, scaled by the return's std")
    elif profile.mean_abs_reward > 1.5:
        earn = f"random actions earn |reward| ~{profile.mean_abs_reward:.3g} per step"
        scale = Derived(True, f"{earn}: scaled by the return's std")
    else:
        scale = Derived(False, f"rewards are O(1) already (|reward| ~{profile.mean_abs_reward:.3g} per step)")
    return {"policy.obs_norm": obs_norm, "train.reward_scale": scale}


def _discount(profile: EnvProfile) -> dict[str, Derived]:
    """A discount horizon 1/(1 - gamma) of a tenth of an episode (within [10, 1000] steps);
    frame-based games: 100 steps."""
    if profile.encoder() != "mlp":
        # Random play says little of a game's episodes (a Breakout life lasts ~40 steps at random,
        # thousands once learned); frames come at a fixed rate, so the horizon is one of time.
        return {
            "train.gamma": Derived(0.99, "image observations: a discount horizon of 100 frames (steps)"),
            "train.gae_lambda": Derived(0.95, "GAE's horizon for a discount horizon of 100 steps"),
        }
    length = profile.episode_length
    horizon = min(1000.0, max(10.0, length / 10.0))
    gamma = round(1.0 - 1.0 / horizon, 4)
    where = f"episodes last ~{length:,.0f} steps ({profile.episode_length_source})"
    values = {"train.gamma": Derived(gamma, f"{where}: a discount horizon of {horizon:.0f} steps")}
    # GAE looks about as far ahead as the discount, less so when that is short (noisier values).
    lam = 0.95 if horizon >= 40 else round(1.0 - 2.0 / horizon, 3)
    values["train.gae_lambda"] = Derived(lam, f"GAE's horizon for a discount horizon of {horizon:.0f} steps")
    return values


def _losses(profile: EnvProfile) -> dict[str, Derived]:
    if isinstance(profile.action_space, gymnasium.spaces.Box):
        entropy = Derived(0.0, "a Gaussian's entropy grows with its std without bound: no bonus")
    else:
        entropy = Derived(0.01, "a small bonus keeps the categorical from collapsing early")
    return {
        "train.ent_coef": entropy,
        "train.vf_clip_coef": Derived(0.0, "no value clipping: it slows the critic while the targets move"),
    }


# ---- applying it ----


def derive_into(cfg: Config, explicit: frozenset[str] = frozenset()) -> dict[str, Derived]:
    """Measure cfg's env and set every derived key not in `explicit`; mark the config
    env.recipe = "derived". Nothing happens (and {} is returned) for an env with a recipe file or
    a config not marked "auto"."""
    if cfg.env.recipe != "auto" or has_recipe_file(cfg.env.name, cfg.env.options):
        return {}
    profile = probe_env(cfg.env.name, cfg.env.options, cfg.train.seed)
    values = derive(profile, cfg, explicit)
    apply_values(cfg, {key: d.value for key, d in values.items()})
    return values


def apply_values(cfg: Config, values: dict[str, Any]) -> None:
    for key, value in values.items():
        set_key(cfg, key, value)
    cfg.env.recipe = "derived"


def changed_keys(cfg: Config) -> frozenset[str]:
    """Dotted keys whose value differs from the defaults: what train(cfg) takes as set by hand."""
    default, current = Config().to_dict(), cfg.to_dict()
    return frozenset(
        f"{section}.{key}"
        for section, values in current.items()
        if isinstance(values, dict) and section != "sweep"
        for key, value in values.items()
        if default.get(section, {}).get(key) != value
    )


def needs_recipe(cfg: Config) -> bool:
    """Whether train(cfg) derives a recipe: marked "auto", no recipe file, not a resumed run (its
    config.json holds what it trained with)."""
    if cfg.env.recipe != "auto" or cfg.run.resume:
        return False
    return not has_recipe_file(cfg.env.name, cfg.env.options)
