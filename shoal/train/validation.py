"""The training config checked against the env before anything is built: each rule once.

The batch geometry is checked here and only here; the RolloutBuffer and the Learner trust it.
A batch of ``train.batch_size`` agent steps is ``num_agents`` rows of ``steps`` steps, cut into
segments of ``train.bptt_horizon`` steps; a minibatch is a whole number of segments, and a
batch a whole number of minibatches. The advantage estimator checks its own keys (gamma,
gae_lambda, V-trace's clips, the adaptive horizon's; shoal.train.advantage.make_estimator).
"""

from __future__ import annotations

import math

from shoal.core.config import Config, ConfigError, TrainConfig

POSITIVE_TRAIN_KEYS = (
    "total_steps",
    "batch_size",
    "bptt_horizon",
    "minibatch_size",
    "max_minibatch_size",
    "update_epochs",
    "checkpoint_interval",
)


def validate(cfg: Config, num_agents: int, world_size: int = 1) -> tuple[int, int]:
    """Check `cfg` (one process's share of the job) for an env of `num_agents` agents; return
    (steps per agent and epoch, epochs of the run when `world_size` processes each collect a
    batch per epoch). Raises ConfigError naming the key."""
    try:
        _check_values(cfg)
        steps = check_batch_geometry(cfg.train, num_agents)
    except ConfigError as e:
        if cfg.train.processes <= 1:
            raise
        raise ConfigError(
            f"{e} (in each process's share of the job: train.processes = {cfg.train.processes} "
            "splits env.num_envs, train.batch_size and the minibatch sizes between them)"
        ) from None
    return steps, math.ceil(cfg.train.total_steps / (cfg.train.batch_size * world_size))


def _check_values(cfg: Config) -> None:
    t = cfg.train
    for key in POSITIVE_TRAIN_KEYS:
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    for key in ("hidden_size", "num_layers"):
        if getattr(cfg.policy, key) <= 0:
            raise ConfigError(f"policy.{key} must be positive, got {getattr(cfg.policy, key)}")
    if t.reward_clip < 0:
        raise ConfigError(f"train.reward_clip must be >= 0 (0 = no clipping), got {t.reward_clip}")
    if not t.target_kl >= 0:
        raise ConfigError(f"train.target_kl must be >= 0 (0 = off), got {t.target_kl}")
    if t.prio_alpha < 0 or not 0.0 <= t.prio_beta0 <= 1.0:
        raise ConfigError(
            "train.prio_alpha must be >= 0 and train.prio_beta0 in [0, 1], "
            f"got {t.prio_alpha}, {t.prio_beta0}"
        )


def check_batch_geometry(t: TrainConfig, num_agents: int) -> int:
    """The batch-geometry rule; returns the steps per agent of one epoch's batch."""
    segment = num_agents * t.bptt_horizon
    if t.batch_size % segment:
        nearest = max(1, round(t.batch_size / segment)) * segment
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of num_agents * train.bptt_horizon "
            f"({num_agents} * {t.bptt_horizon} = {segment}); e.g. {nearest}"
        )
    if t.minibatch_size > t.batch_size or t.batch_size % t.minibatch_size:
        raise ConfigError(
            f"train.minibatch_size ({t.minibatch_size}) must divide train.batch_size ({t.batch_size})"
        )
    if t.minibatch_size % t.bptt_horizon:
        raise ConfigError(
            f"train.minibatch_size ({t.minibatch_size}) must be a multiple of "
            f"train.bptt_horizon ({t.bptt_horizon})"
        )
    if t.max_minibatch_size < t.bptt_horizon:
        raise ConfigError(
            f"train.max_minibatch_size ({t.max_minibatch_size}) must be at least "
            f"train.bptt_horizon ({t.bptt_horizon})"
        )
    return t.batch_size // num_agents
