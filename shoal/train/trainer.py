"""PPO, top to bottom: `train(cfg, on_epoch=None) -> TrainResult` (docs/architecture.md §2).

`train` sets up one process's share of the job (threads, device, seeds, the envs and the config
checked against them), builds what PPO needs (the advantage estimator, the policy and its
optimizers, the rollout buffer, the Collector that fills it and the Learner that updates from
it), then runs epochs until the steps are done, the score target is reached or `on_epoch` says
stop. Each epoch:

    collect (the Collector) -> update (the Learner: advantages, then minibatch PPO steps)
    -> log (the metrics record) -> checkpoint

Around the loop, each in its own module: the run folder, metrics file and checkpoints
(shoal.train.run), the config checks (shoal.train.validation), and the opt-in performance
machinery, which the loop meets only where it is set up or as a phase hook: torch threads tuned
per phase (shoal.train.threads), data-parallel processes (shoal.train.distributed and
shoal.train.launch), autocast and torch.compile (shoal.train.accel) and the rollout's CUDA graph
(shoal.train.cuda_graph).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoal.core.config import Config, ConfigError
from shoal.core.hardware import resolve_device, resolve_precision
from shoal.core.names import is_emulated, split_env_name
from shoal.emulation import structured_observation_space
from shoal.envs.registry import make
from shoal.mup import regroup
from shoal.policy import Policy, make_policy, resolve_encoder
from shoal.train import accel, distributed, launch, recipe, threads
from shoal.train.advantage import AdvantageEstimator, make_estimator
from shoal.train.cuda_graph import use_cuda_graph
from shoal.train.dashboard import Dashboard, make_dashboard
from shoal.train.learner import Learner
from shoal.train.normalize import RewardScaler
from shoal.train.optim import Optimizers, make_optimizer
from shoal.train.rollout import Collector, EnvError, RolloutBuffer
from shoal.train.run import Run, Trained, new_run_dir, read_resume_checkpoint, seed_everything
from shoal.train.validation import validate

OnEpoch = Callable[[dict[str, Any]], Any]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    # Wall seconds until score_100 first reached train.target_score (None if it never did).
    time_to_target: float | None = None
    # This process's rank in a multi-process run (0 alone, or without torchrun).
    rank: int = 0


@dataclass
class PPO:
    """What one process trains with."""

    env: Any
    policy: Policy
    optimizers: Optimizers
    buffer: RolloutBuffer
    collector: Collector
    learner: Learner
    device: torch.device
    precision: str

    def trained(self) -> Trained:
        """What a checkpoint of this process saves besides the run's progress."""
        env = self.env
        return Trained(
            self.policy,
            self.optimizers,
            self.learner,
            env.single_observation_space,
            env.single_action_space,
            self.collector.reward_scaler,
        )


def train(cfg: Config, on_epoch: OnEpoch | None = None) -> TrainResult:
    """Train a policy with PPO as `cfg` says; `on_epoch(metrics)` returning False stops early.

    With ``run.resume`` set to a run folder (or checkpoint file) the run continues from its
    checkpoint in the same folder. With ``train.deterministic`` the envs are re-seeded after
    every checkpoint, so a resumed run repeats the uninterrupted one exactly.

    Launched by torchrun with several processes, the run is data parallel (see
    shoal.train.distributed): train.total_steps counts the steps of all processes together,
    train.batch_size is each process's own batch, and only rank 0 writes the run folder, shows
    progress and calls `on_epoch` (its decision to stop applies to every rank).

    The OpenMP wait policy (train.omp_wait_policy) takes effect only if it was put into the
    environment before torch loaded; shoal.train.threads says how.

    An env no recipe file names, in a config still marked ``env.recipe = "auto"``, gets a recipe
    derived from the env (shoal.train.recipe) for every value that is still at its default.
    """
    dist, device_name = distributed.setup(cfg.train.device)
    finished = False
    try:
        result = _train(with_recipe(cfg, dist), on_epoch, dist, device_name)
        finished = True
        return result
    finally:
        dist.close(synchronize=finished)


def with_recipe(cfg: Config, dist: distributed.Dist) -> Config:
    """`cfg`, or a copy with the env's derived recipe: rank 0 measures the env, and every rank
    trains with its values."""
    if not recipe.needs_recipe(cfg):
        return cfg
    cfg = cfg.copy()
    values = None
    if dist.is_main:
        derived = recipe.derive(
            recipe.probe_env(cfg.env.name, cfg.env.options, cfg.train.seed), cfg, recipe.changed_keys(cfg)
        )
        values = {key: d.value for key, d in derived.items()}
    recipe.apply_values(cfg, dist.broadcast_object(values))
    return cfg


def _train(
    job_cfg: Config, on_epoch: OnEpoch | None, dist: distributed.Dist, device_name: str
) -> TrainResult:
    # The run folder keeps the whole job's config; this process works on its share of it.
    cfg = launch.split_config(job_cfg, dist.world_size)
    tcfg = cfg.train
    thread_info = threads.configure_threads(
        tcfg.torch_threads, tcfg.omp_wait_policy, distributed.local_world_size()
    )
    device = resolve_device(device_name)
    # Each rank its own envs and action sampling; rank 0 seeds as a single process would.
    seed = dist.rank_seed(tcfg.seed)
    seed_everything(seed)
    if tcfg.deterministic:
        use_deterministic_algorithms(device)
    resume, run_dir = read_resume_checkpoint(cfg.run.resume) if cfg.run.resume else (None, None)
    with contextlib.ExitStack() as cleanup:
        env = make_env(cfg, seed)
        cleanup.callback(env.close)
        recipe.check_spaces(cfg.env.name, env.single_observation_space, env.single_action_space)
        steps_per_agent, total_epochs = validate(cfg, env.num_agents, dist.world_size)
        check_policy(cfg, env)
        estimator = make_estimator(tcfg, cfg.policy.hidden_size)
        if run_dir is None:
            # Made only once the config is known to be valid, so a mistake leaves no empty folder.
            run_dir = Path(dist.broadcast_object(str(new_run_dir(cfg)) if dist.is_main else None))
        ppo = build(cfg, env, estimator, device, dist, steps_per_agent, total_epochs)
        run = Run(run_dir, job_cfg, cfg, dist, ppo.trained(), seed, total_epochs)
        if resume is not None:
            run.restore(resume)
        obs, _ = env.reset(seed=run.resume_seed() if resume is not None else seed)
        # The base Dashboard shows nothing: the other ranks run quiet.
        dashboard = cleanup.enter_context(make_dashboard(job_cfg) if dist.is_main else Dashboard(job_cfg))
        phases = threads.phase_threads(tcfg, device.type, thread_info)
        try:
            with run:
                run_epochs(cfg, ppo, run, obs, phases, dashboard, on_epoch)
        except (KeyboardInterrupt, EnvError):
            # The interrupted epoch may be half done: keep the last checkpoint for --resume and
            # save the current weights for eval (an env's NaN never reaches them: it is caught
            # as the env returns it).
            run.save_model()
            raise
        run.finish()
        metrics = run.history[-1] if run.history else {}
        return TrainResult(run.dir, metrics, run.history, run.time_to_target, dist.rank)


# ---- setup ----


def use_deterministic_algorithms(device: torch.device) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def make_env(cfg: Config, seed: int | None = None) -> Any:
    """The training envs, seeded with `seed` (default: train.seed)."""
    seed = cfg.train.seed if seed is None else seed
    options: dict[str, Any] = dict(cfg.env.options)
    if cfg.env.backend == "native":
        return make(
            cfg.env.name, num_envs=cfg.env.num_envs, seed=seed, num_threads=cfg.env.num_threads, **options
        )
    if cfg.env.backend == "envpool":
        return _make_envpool(cfg, seed, options)
    from shoal import vector

    if not is_emulated(cfg.env.name):
        # Each worker steps its share of a native env on one thread; the workers are the parallelism.
        options.setdefault("num_threads", 1)
    # The trainer steps all envs together, so a batch is every env (synchronous use).
    return vector.make(
        cfg.env.name,
        backend=cfg.env.backend,
        num_envs=cfg.env.num_envs,
        num_workers=cfg.env.num_workers,
        seed=seed,
        env_kwargs=options,
    )


def _make_envpool(cfg: Config, seed: int, options: dict[str, Any]) -> Any:
    from shoal.atari_pool import make_envpool_atari

    kind, env_id = split_env_name(cfg.env.name)
    if kind != "gym":
        raise ConfigError(
            f"env.backend = 'envpool' runs ale-py games (e.g. gym:ALE/Pong-v5), not {cfg.env.name!r}"
        )
    try:
        return make_envpool_atari(
            env_id, num_envs=cfg.env.num_envs, seed=seed, num_threads=cfg.env.num_threads, **options
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_policy(cfg: Config, env: Any) -> None:
    """ConfigError, before the run folder exists, when the policy as configured cannot read the
    env's observations (policy.encoder and the keys that depend on it)."""
    structured = structured_observation_space(env)
    choice = resolve_encoder(cfg.policy, env.single_observation_space, structured)
    if cfg.train.optimizer == "muon" and choice.name != "mlp":
        # torch's Muon takes only 2-D matrices, and a CNN's kernels are 4-D.
        raise ConfigError(
            f"train.optimizer = 'muon' needs the MLP encoder, but policy.encoder resolved to "
            f"{choice.name!r} for image observations: use train.optimizer = 'adam' or 'adamw'"
        )


def build(
    cfg: Config,
    env: Any,
    estimator: AdvantageEstimator,
    device: torch.device,
    dist: distributed.Dist,
    steps_per_agent: int,
    total_epochs: int,
) -> PPO:
    """The policy, its optimizers, the buffer, the Collector and the Learner."""
    tcfg = cfg.train
    obs_space, structured = env.single_observation_space, structured_observation_space(env)
    policy = make_policy(obs_space, env.single_action_space, cfg.policy, estimator.aux_head, structured)
    policy = policy.to(device)
    dist.broadcast_module(policy)
    optimizers = regroup(make_optimizer(policy, tcfg), policy)  # muP learning-rate multipliers
    precision = resolve_precision(tcfg.precision, device)
    autocast = accel.autocast_for(precision, device)
    step_fn, forward_fn = accel.policy_functions(policy, tcfg)
    buffer = RolloutBuffer(
        env.num_agents,
        steps_per_agent,
        tcfg.bptt_horizon,
        policy.obs_size,
        obs_space.dtype,
        policy.spec.dims,
        policy.spec.kind == "continuous",
        cfg.policy.hidden_size if cfg.policy.lstm else 0,
        device,
    )
    collector = Collector(
        env,
        policy,
        buffer,
        device,
        tcfg.gamma,
        autocast=autocast,
        step_fn=step_fn,
        reward_clip=tcfg.reward_clip,
        bootstrap_truncation=estimator.bootstrap_truncation,
        reward_scaler=RewardScaler(env.num_agents, tcfg.gamma, device) if tcfg.reward_scale else None,
        check_finite=is_emulated(cfg.env.name) or cfg.env.backend != "native",
        env_name=cfg.env.name,
    )
    if tcfg.cuda_graph:
        use_cuda_graph(collector)
    updates_per_epoch = tcfg.update_epochs * (tcfg.batch_size // tcfg.minibatch_size)
    learner = Learner(
        policy,
        optimizers,
        buffer,
        tcfg,
        estimator,
        total_epochs * updates_per_epoch,
        autocast,
        forward_fn,
        grad_sync=dist.all_reduce_grads if dist.enabled else None,
        all_sum=dist.all_sum if dist.enabled else None,
    )
    return PPO(env, policy, optimizers, buffer, collector, learner, device, precision)


# ---- the loop ----


def run_epochs(
    cfg: Config,
    ppo: PPO,
    run: Run,
    obs: Any,
    phases: threads.PhaseThreads,
    dashboard: Dashboard,
    on_epoch: OnEpoch | None,
) -> None:
    """Collect, update, log and checkpoint, epoch after epoch, until the run is done or stopped."""
    tcfg, dist = cfg.train, run.dist
    policy, collector, learner = ppo.policy, ppo.collector, ppo.learner
    combine_stats = dist.merge_batch_stats if dist.enabled else None
    clock = time.perf_counter
    start = clock()
    stop = False
    while run.epoch < run.total_epochs and not stop:
        t_epoch = clock()
        collector.times.reset()
        policy.eval()
        with phases.phase("rollout"):
            obs = collector.collect(obs)
        log = ppo.env.log()

        t_learn = clock()
        policy.train()
        with phases.phase("update"):
            stats = learner.learn()
            # After the update, so that the epoch's ratios start at 1; the next rollout sees the
            # statistics including this epoch's observations.
            policy.update_obs_stats(ppo.buffer.obs, combine_stats)
        time_learn = clock() - t_learn

        run.epoch += 1
        run.agent_steps += tcfg.batch_size * dist.world_size
        now = clock()
        run.wall_time = run.wall_offset + (now - start)
        metrics = epoch_metrics(ppo, run, phases.info, log, stats, now - t_epoch, time_learn)
        stop = run.record(metrics, tcfg.target_score)
        dashboard.update(metrics)
        if cfg.run.profile and dist.is_main:
            print(profile_line(metrics), flush=True)
        if dist.is_main and on_epoch is not None and on_epoch(metrics) is False:
            stop = True
        if dist.enabled:
            stop = dist.any(stop, ppo.device)

        if run.epoch % tcfg.checkpoint_interval == 0 or stop or run.epoch >= run.total_epochs:
            run.save_checkpoint()
            if tcfg.deterministic and not stop and run.epoch < run.total_epochs:
                # A resume from this checkpoint starts from freshly seeded envs; the
                # uninterrupted run does the same so both continue identically.
                obs, _ = ppo.env.reset(seed=run.resume_seed())
                collector.reset_state()


def epoch_metrics(
    ppo: PPO,
    run: Run,
    thread_info: dict[str, Any],
    log: dict[str, Any],
    stats: dict[str, float],
    epoch_time: float,
    time_learn: float,
) -> dict[str, Any]:
    """The epoch's record, as metrics.jsonl, the dashboard, sweeps and analysis read it. With
    several processes, steps/s and the episode statistics are the whole job's."""
    sps, log = run.dist.merge_epoch_log(run.cfg.train.batch_size / epoch_time, log)
    episodes = float(log.get("episodes", 0.0)) if log else 0.0
    score = float(log["score"]) if episodes > 0 else math.nan
    episode_return = float(log.get("episode_return", math.nan)) if episodes > 0 else math.nan
    run.scores.add(score, episodes)
    run.returns.add(episode_return, episodes)
    times = ppo.collector.times
    metrics = {
        "epoch": run.epoch,
        "agent_steps": run.agent_steps,
        "wall_time": run.wall_time,
        "sps": sps,
        "score": score,
        "score_100": run.scores.mean(),
        "episode_return": episode_return,
        "return_100": run.returns.mean(),
        "episode_length": float(log.get("episode_length", math.nan)) if episodes > 0 else math.nan,
        "episodes": episodes,
        "learning_rate": ppo.learner.current_lr(),
        **stats,
        "time_env": times.env,
        "time_inference": times.inference,
        "time_copy": times.copy,
        "time_learn": time_learn,
        "time_other": max(0.0, epoch_time - times.env - times.inference - times.copy - time_learn),
        **thread_info,
        "device": str(ppo.device),
        "precision": ppo.precision,
        "env_threads": getattr(ppo.env, "num_threads", None),
    }
    if run.dist.enabled:
        metrics["world_size"] = run.dist.world_size
    return metrics


def profile_line(m: dict[str, Any]) -> str:
    """One epoch's time split, for run.profile."""
    phases = ("env", "inference", "copy", "learn", "other")
    total = sum(m[f"time_{k}"] for k in phases) or 1.0
    parts = [f"epoch {m['epoch']}: {m['sps']:.0f} steps/s"]
    parts += [f"{k} {m[f'time_{k}'] * 1000:.1f}ms ({100 * m[f'time_{k}'] / total:.0f}%)" for k in phases]
    return " | ".join(parts)
