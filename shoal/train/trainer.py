"""The training loop: rollout, PPO update, metrics, checkpoints (docs/architecture.md §2)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.core.config import Config, ConfigError
from shoal.core.fileio import write_text_atomic
from shoal.core.hardware import resolve_device, resolve_precision
from shoal.mup import regroup
from shoal.policy import make_policy
from shoal.train import distributed, launch
from shoal.train.checkpoint import (
    CHECKPOINT,
    MODEL,
    atomic_torch_save,
    load_file,
    model_payload,
    resolve_checkpoint,
)
from shoal.train.horizon import head_lags
from shoal.train.learner import Learner
from shoal.train.optim import make_optimizer
from shoal.train.rollout import Collector, RolloutBuffer


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    # Wall seconds until score_100 first reached train.target_score (None if it never did).
    time_to_target: float | None = None
    # This process's rank in a multi-process run (0 alone, or without torchrun).
    rank: int = 0


class ScoreWindow:
    """Mean score over (about) the last `size` episodes, from per-epoch means and counts."""

    def __init__(self, size: int = 100) -> None:
        self.size = size
        self.entries: deque[tuple[float, float]] = deque()

    def add(self, mean: float, count: float) -> None:
        if count <= 0 or not math.isfinite(mean):
            return
        self.entries.append((mean, count))
        # Drop whole epochs that are older than the last `size` episodes.
        while len(self.entries) > 1 and sum(n for _, n in list(self.entries)[1:]) >= self.size:
            self.entries.popleft()

    def mean(self) -> float:
        total, weight = 0.0, 0.0
        for score, count in reversed(self.entries):
            take = min(count, self.size - weight)
            if take <= 0:
                break
            total += score * take
            weight += take
        return total / weight if weight > 0 else float("nan")

    def state(self) -> list[list[float]]:
        return [list(e) for e in self.entries]

    def load(self, entries: list[list[float]]) -> None:
        self.entries = deque((float(m), float(n)) for m, n in entries)


# ---- setup ----


def configure_threads(torch_threads: int, omp_wait_policy: str = "auto") -> dict[str, Any]:
    """Torch intra-op threads: `torch_threads`, or min(2, this process's share of the cores) when 0
    (torchrun's processes on one machine share its cores). The OpenMP wait policy was fixed when
    torch loaded (shoal.train.threads); this reports it, and warns when it is not the one asked.

    Returns the metrics' ``torch_threads`` and ``omp_wait_policy`` (passive, active, default =
    libgomp's spin-then-sleep, with "?" appended when it could not be verified).
    """
    from shoal.train import threads as thread_setup

    if torch_threads < 0:
        raise ConfigError(f"train.torch_threads must be >= 0, got {torch_threads}")
    threads = thread_setup.choose_torch_threads(torch_threads, distributed.local_world_size())
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        # Allowed once per process, before inter-op work starts; later calls keep the first value.
        torch.set_num_interop_threads(1)
    try:
        status = thread_setup.wait_policy_status(omp_wait_policy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if omp_wait_policy != "auto" and status.note:
        print(f"warning: train.omp_wait_policy: {status.note}", file=sys.stderr, flush=True)
    policy = status.effective + ("" if status.verified else "?")
    return {
        "torch_threads": threads,
        "torch_threads_rollout": threads,
        "omp_wait_policy": policy,
        "threads_tuned": False,
    }


def thread_tuners(tcfg: Any, device: torch.device, thread_info: dict[str, Any]) -> Any:
    """(rollout, update) ThreadTuners choosing between the automatic count and 1 thread
    (shoal.train.threads), or None: only with train.torch_threads = 0, on the CPU, not
    train.deterministic and not train.compile (compiled code is specialized to the thread
    count, so every switch would recompile). They keep `thread_info` (the metrics'
    torch_threads_rollout and torch_threads, the update's) up to date."""
    from shoal.train.threads import ThreadTuner

    threads = thread_info["torch_threads"]
    fixed = tcfg.torch_threads != 0 or tcfg.deterministic or tcfg.compile
    if fixed or device.type != "cpu" or threads < 2:
        return None
    thread_info["threads_tuned"] = True
    return (
        ThreadTuner([threads, 1], torch.set_num_threads, thread_info, key="torch_threads_rollout"),
        ThreadTuner([threads, 1], torch.set_num_threads, thread_info, key="torch_threads"),
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reseed(seed: int, epoch: int) -> int:
    """Env seed after a checkpoint at `epoch` (deterministic runs and resumes)."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        # As plain lists so that checkpoints load with torch.load(weights_only=True).
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_env(cfg: Config, seed: int | None = None) -> Any:
    """The training envs, seeded with `seed` (default: train.seed)."""
    import shoal

    seed = cfg.train.seed if seed is None else seed
    options: dict[str, Any] = dict(cfg.env.options)
    if cfg.train.overlap:
        if cfg.env.backend != "native" or cfg.env.name.startswith(("gym:", "pettingzoo:")):
            raise ConfigError(
                "train.overlap needs a native env with env.backend = 'native' "
                f"(got env {cfg.env.name!r}, backend {cfg.env.backend!r})"
            )
        from shoal.train.overlap import EnvHalves

        if cfg.env.num_envs < 2:
            raise ConfigError(f"train.overlap needs env.num_envs >= 2 (two halves), got {cfg.env.num_envs}")
        # Two native envs of half the envs each; the Collector steps one while it acts for the other.
        return EnvHalves(cfg.env.name, cfg.env.num_envs, seed, cfg.env.num_threads, **options)
    if cfg.env.backend == "native":
        return shoal.make(
            cfg.env.name,
            num_envs=cfg.env.num_envs,
            seed=seed,
            num_threads=cfg.env.num_threads,
            **options,
        )
    from shoal import vector

    if not cfg.env.name.startswith(("gym:", "pettingzoo:")):
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


def validate(cfg: Config, num_agents: int) -> tuple[int, int]:
    """Check the batch geometry against the env; return (steps per agent, total epochs)."""
    t = cfg.train
    positive = (
        "total_steps",
        "batch_size",
        "bptt_horizon",
        "minibatch_size",
        "max_minibatch_size",
        "update_epochs",
        "checkpoint_interval",
    )
    for key in positive:
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    if cfg.policy.hidden_size <= 0:
        raise ConfigError(f"policy.hidden_size must be positive, got {cfg.policy.hidden_size}")
    if cfg.policy.num_layers <= 0:
        raise ConfigError(f"policy.num_layers must be positive, got {cfg.policy.num_layers}")
    if t.advantage not in ("gae", "adaptive_horizon"):
        raise ConfigError(f"train.advantage must be 'gae' or 'adaptive_horizon', got {t.advantage!r}")
    if t.advantage == "adaptive_horizon":
        if not 1 <= t.min_horizon <= t.max_horizon:
            raise ConfigError(
                "train.min_horizon and train.max_horizon must satisfy 1 <= min <= max, "
                f"got {t.min_horizon}, {t.max_horizon}"
            )
        if t.horizon_margin < 0:
            raise ConfigError(f"train.horizon_margin must be >= 0, got {t.horizon_margin}")
    if not (0.0 <= t.gamma <= 1.0 and 0.0 <= t.gae_lambda <= 1.0):
        raise ConfigError(
            f"train.gamma and train.gae_lambda must be in [0, 1], got {t.gamma}, {t.gae_lambda}"
        )
    if t.reward_clip < 0:
        raise ConfigError(f"train.reward_clip must be >= 0 (0 = no clipping), got {t.reward_clip}")
    if t.prio_alpha < 0 or not 0.0 <= t.prio_beta0 <= 1.0:
        raise ConfigError(
            "train.prio_alpha must be >= 0 and train.prio_beta0 in [0, 1], "
            f"got {t.prio_alpha}, {t.prio_beta0}"
        )
    if t.vtrace and (t.vtrace_rho_clip <= 0 or t.vtrace_c_clip <= 0):
        raise ConfigError(
            f"train.vtrace_rho_clip and train.vtrace_c_clip must be positive, "
            f"got {t.vtrace_rho_clip}, {t.vtrace_c_clip}"
        )
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
    steps = t.batch_size // num_agents
    if t.advantage == "adaptive_horizon" and t.max_horizon > steps:
        print(
            f"warning: train.max_horizon ({t.max_horizon}) is more than the rollout's {steps} steps per "
            f"agent (train.batch_size / agents); lags past {steps} are never observed, so the horizon "
            f"stops at {steps}. Raise train.batch_size or lower env.num_envs for a longer one.",
            file=sys.stderr,
            flush=True,
        )
    return steps, math.ceil(t.total_steps / t.batch_size)


def new_run_dir(cfg: Config) -> Path:
    root = Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.env.name.replace(':', '_').replace('/', '_')}_" + datetime.now(
        UTC
    ).strftime("%Y%m%d_%H%M%S")
    path, n = root / name, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = root / f"{name}_{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _profile_line(m: dict[str, Any]) -> str:
    parts = [f"epoch {m['epoch']}: {m['sps']:.0f} steps/s"]
    total = sum(m[f"time_{k}"] for k in ("env", "inference", "copy", "learn", "other")) or 1.0
    for k in ("env", "inference", "copy", "learn", "other"):
        v = m[f"time_{k}"]
        parts.append(f"{k} {v * 1000:.1f}ms ({100 * v / total:.0f}%)")
    return " | ".join(parts)


# ---- the loop ----


def train(cfg: Config, on_epoch: Callable[[dict[str, Any]], Any] | None = None) -> TrainResult:
    """Train a policy with PPO as `cfg` says; `on_epoch(metrics)` returning False stops early.

    With ``run.resume`` set to a run folder (or checkpoint file) the run continues from its
    checkpoint in the same folder. With ``train.deterministic`` the envs are re-seeded after
    every checkpoint, so a resumed run repeats the uninterrupted one exactly.

    Launched by torchrun with several processes, the run is data parallel (see
    shoal.train.distributed): train.total_steps counts the steps of all processes together,
    train.batch_size is each process's own batch, and only rank 0 writes the run folder, shows
    progress and calls `on_epoch` (its decision to stop applies to every rank).
    """
    dist, device_name = distributed.setup(cfg.train.device)
    finished = False
    try:
        result = _train(cfg, on_epoch, dist, device_name)
        finished = True
        return result
    finally:
        dist.close(synchronize=finished)


def _train(
    cfg: Config,
    on_epoch: Callable[[dict[str, Any]], Any] | None,
    dist: distributed.Dist,
    device_name: str,
) -> TrainResult:
    from shoal.train.dashboard import Dashboard, make_dashboard

    # The run folder keeps the whole job's config; this process works on its share of it.
    job_cfg = cfg
    cfg = launch.split_config(cfg, dist.world_size)
    tcfg = cfg.train
    main = dist.is_main
    thread_info = configure_threads(tcfg.torch_threads, tcfg.omp_wait_policy)
    device = resolve_device(device_name)
    # Each rank its own envs and action sampling; rank 0 seeds as a single process would.
    seed = dist.rank_seed(tcfg.seed)
    seed_everything(seed)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False

    resume_data = None
    if cfg.run.resume:
        ckpt_path = resolve_checkpoint(cfg.run.resume, prefer=CHECKPOINT)
        if ckpt_path.name != CHECKPOINT and not ckpt_path.name.startswith("checkpoint"):
            raise ConfigError(f"run.resume needs a {CHECKPOINT} to continue from, got {ckpt_path}")
        resume_data = load_file(ckpt_path)
        run_dir = ckpt_path.parent
    else:
        run_dir = None

    env = make_env(cfg, seed)
    dashboard = None
    try:
        num_agents = env.num_agents
        try:
            steps_per_agent, total_epochs = validate(cfg, num_agents)
        except ConfigError as e:
            if cfg is job_cfg:
                raise
            raise ConfigError(
                f"{e} (in each process's share of the job: train.processes = {tcfg.processes} "
                f"splits env.num_envs, train.batch_size and the minibatch sizes between them)"
            ) from None
        if run_dir is None:
            # Made only once the config is known to be valid, so a mistake leaves no empty folder.
            run_dir = Path(dist.broadcast_object(str(new_run_dir(cfg)) if main else None))
        # Each epoch every rank collects a batch.
        total_epochs = math.ceil(tcfg.total_steps / (tcfg.batch_size * dist.world_size))
        obs_space, act_space = env.single_observation_space, env.single_action_space
        policy = make_policy(obs_space, act_space, cfg.policy, head_lags(tcfg)).to(device)
        dist.broadcast_module(policy)
        optimizers = regroup(make_optimizer(policy, tcfg), policy)  # muP learning-rate multipliers
        autocast = None
        precision = resolve_precision(tcfg.precision, device)
        if precision == "bfloat16":
            autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
        step_fn, forward_fn = policy.step, policy.forward_sequence
        if tcfg.compile:
            # reduce-overhead's CUDA graphs are for the training pass: the rollout keeps its
            # recurrent state across calls and resets it in place, and has its own graph
            # (train.cuda_graph).
            step_mode = "default" if tcfg.compile_mode == "reduce-overhead" else tcfg.compile_mode
            step_fn = torch.compile(policy.step, mode=step_mode)
            forward_fn = torch.compile(policy.forward_sequence, mode=tcfg.compile_mode)

        buffer = RolloutBuffer(
            num_agents,
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
            bootstrap_truncation=tcfg.advantage != "adaptive_horizon",
            overlap=tcfg.overlap,
            thread_tuners=thread_tuners(tcfg, device, thread_info),
            cuda_graph=tcfg.cuda_graph,
        )
        updates_per_epoch = tcfg.update_epochs * (tcfg.batch_size // tcfg.minibatch_size)
        learner = Learner(
            policy,
            optimizers,
            buffer,
            tcfg,
            total_epochs * updates_per_epoch,
            autocast,
            forward_fn,
            grad_sync=dist.all_reduce_grads if dist.enabled else None,
            all_sum=dist.all_sum if dist.enabled else None,
        )
        combine_stats = dist.merge_batch_stats if dist.enabled else None

        epoch, agent_steps, wall_offset = 0, 0, 0.0
        scores = ScoreWindow(100)
        time_to_target: float | None = None
        history: list[dict[str, Any]] = []
        metrics_path = run_dir / "metrics.jsonl"
        if resume_data is not None:
            try:
                policy.load_state_dict(resume_data["model"])
            except RuntimeError as e:
                raise ConfigError(
                    f"the checkpoint in {run_dir} does not fit this config's policy: {e}"
                ) from None
            optimizers.load_state_dict(resume_data["optimizer"])
            epoch = int(resume_data["epoch"])
            agent_steps = int(resume_data["agent_steps"])
            wall_offset = float(resume_data["wall_time"])
            learner.update = int(resume_data["update"])
            if learner.adaptive and "horizon" in resume_data:
                learner.horizon = int(resume_data["horizon"])
            scores.load(resume_data["score_window"])
            time_to_target = resume_data.get("time_to_target")
            rank_rngs = resume_data.get("rng_ranks")
            if dist.enabled and rank_rngs and len(rank_rngs) == dist.world_size:
                set_rng_state(rank_rngs[dist.rank])
            else:
                set_rng_state(resume_data["rng"])
                if dist.rank > 0:
                    # Saved by another number of processes: keep this rank's sampling its own.
                    seed_everything(reseed(seed, epoch))
            if main:
                history = _read_history(metrics_path, epoch)
                write_text_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))
            obs_np, _ = env.reset(seed=reseed(seed, epoch))
        else:
            obs_np, _ = env.reset(seed=seed)
        if main:
            write_text_atomic(run_dir / "config.json", json.dumps(job_cfg.to_dict(), indent=2) + "\n")

        def save_checkpoint() -> None:
            # Every rank takes part (the gathers); rank 0 writes.
            ranks: dict[str, Any] = {}
            if dist.enabled:
                gathered = dist.gather_objects((rng_state(), distributed.state_digest(policy)))
                digests = [d for _, d in gathered]
                ranks = {
                    "world_size": dist.world_size,
                    "rng_ranks": [r for r, _ in gathered],
                    "rank_digests": digests,
                }
                warning = distributed.digest_check(digests)
                if warning and main:
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
            if not main:
                return
            atomic_torch_save(
                {
                    "model": policy.state_dict(),
                    "optimizer": optimizers.state_dict(),
                    "config": job_cfg.to_dict(),
                    "epoch": epoch,
                    "agent_steps": agent_steps,
                    "wall_time": wall_time,
                    "update": learner.update,
                    "horizon": learner.horizon if learner.adaptive else None,
                    "score_window": scores.state(),
                    "time_to_target": time_to_target,
                    "rng": rng_state(),
                    **{
                        k: v
                        for k, v in model_payload(policy, cfg, obs_space, act_space).items()
                        if k != "model"
                    },
                    **ranks,
                },
                run_dir / CHECKPOINT,
            )

        # The base Dashboard shows nothing: the other ranks run quiet.
        dashboard = make_dashboard(job_cfg) if main else Dashboard(job_cfg)
        metrics: dict[str, Any] = history[-1] if history else {}
        start = time.perf_counter()
        wall_time = wall_offset
        clock = time.perf_counter
        stop = False
        try:
            with open(metrics_path, "a") if main else contextlib.nullcontext() as metrics_file:
                while epoch < total_epochs and not stop:
                    t_epoch = clock()
                    collector.times.reset()
                    policy.eval()
                    obs_np = collector.collect(obs_np)
                    log = env.log()
                    t_learn = clock()
                    policy.train()
                    stats = learner.learn()
                    # After the update, so that the epoch's ratios start at 1; the next rollout
                    # sees the statistics including this epoch's observations.
                    policy.update_obs_stats(buffer.obs, combine_stats)
                    collector.times.learn = clock() - t_learn
                    epoch += 1
                    agent_steps += tcfg.batch_size * dist.world_size
                    now = clock()
                    epoch_time = now - t_epoch
                    wall_time = wall_offset + (now - start)
                    episodes = float(log.get("episodes", 0.0)) if log else 0.0
                    sps = tcfg.batch_size / epoch_time
                    if dist.enabled:
                        sps, log, episodes = _merge_epoch_log(dist, device, sps, log, episodes)
                    score = float(log["score"]) if log and episodes > 0 else float("nan")
                    scores.add(score, episodes)
                    times = collector.times
                    metrics = {
                        "epoch": epoch,
                        "agent_steps": agent_steps,
                        "wall_time": wall_time,
                        "sps": sps,
                        "score": score,
                        "score_100": scores.mean(),
                        "episode_return": _log_mean(log, "episode_return", episodes),
                        "episode_length": _log_mean(log, "episode_length", episodes),
                        "episodes": episodes,
                        "learning_rate": learner.current_lr(),
                        **stats,
                        "time_env": times.env,
                        "time_inference": times.inference,
                        "time_copy": times.copy,
                        "time_learn": times.learn,
                        "time_other": max(
                            0.0, epoch_time - times.env - times.inference - times.copy - times.learn
                        ),
                        **thread_info,
                        "device": str(device),
                        "precision": precision,
                        "env_threads": getattr(env, "num_threads", None),
                        "overlap": tcfg.overlap,
                        "time_env_hidden": collector.env_hidden,
                    }
                    if dist.enabled:
                        metrics["world_size"] = dist.world_size
                    target = tcfg.target_score
                    if target is not None and time_to_target is None and scores.mean() >= target:
                        time_to_target = wall_time
                        stop = True
                    metrics["time_to_target"] = time_to_target
                    history.append(metrics)
                    if main:
                        metrics_file.write(json.dumps(metrics) + "\n")
                        metrics_file.flush()
                    dashboard.update(metrics)
                    if cfg.run.profile and main:
                        print(_profile_line(metrics), flush=True)
                    if main and on_epoch is not None and on_epoch(metrics) is False:
                        stop = True
                    if dist.enabled:
                        stop = dist.any(stop, device)
                    if epoch % tcfg.checkpoint_interval == 0 or stop or epoch >= total_epochs:
                        save_checkpoint()
                        if tcfg.deterministic and not stop and epoch < total_epochs:
                            # A resume from this checkpoint starts from freshly seeded envs; the
                            # uninterrupted run does the same so both continue identically.
                            obs_np, _ = env.reset(seed=reseed(seed, epoch))
                            collector.reset_state()
        except KeyboardInterrupt:
            # The interrupted epoch may be half done: keep the last checkpoint for --resume and
            # save the current weights for eval.
            if main:
                atomic_torch_save(model_payload(policy, cfg, obs_space, act_space), run_dir / MODEL)
            raise
        # Rank 0's answer for all: the other ranks may not see the run folder.
        if dist.broadcast_object(epoch == 0 or not (run_dir / CHECKPOINT).exists() if main else None):
            save_checkpoint()
        if main:
            atomic_torch_save(model_payload(policy, cfg, obs_space, act_space), run_dir / MODEL)
        return TrainResult(run_dir, metrics, history, time_to_target, dist.rank)
    finally:
        if dashboard is not None:
            dashboard.close()
        env.close()


def _merge_epoch_log(
    dist: distributed.Dist, device: torch.device, sps: float, log: dict[str, Any], episodes: float
) -> tuple[float, dict[str, Any], float]:
    """All ranks' steps/s summed and their episode means merged, weighted by episode counts."""
    keys = ("score", "episode_return", "episode_length")
    weighted = [float(log[k]) * episodes if episodes > 0 and k in log else 0.0 for k in keys]
    sums = dist.sum_floats([sps, episodes, *weighted], device)
    total_sps, total_episodes = sums[0], sums[1]
    if total_episodes <= 0:
        return total_sps, {}, 0.0
    merged: dict[str, Any] = {k: v / total_episodes for k, v in zip(keys, sums[2:], strict=True)}
    merged["episodes"] = total_episodes
    return total_sps, merged, total_episodes


def _log_mean(log: dict[str, Any], key: str, episodes: float) -> float:
    return float(log.get(key, math.nan)) if episodes > 0 else math.nan


def _read_history(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Metrics lines of epochs <= `up_to_epoch` (later ones were not checkpointed)."""
    if not path.exists():
        return []
    history = []
    for line in path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            if m.get("epoch", 0) <= up_to_epoch:
                history.append(m)
    return history
