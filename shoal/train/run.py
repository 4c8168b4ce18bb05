"""Run management: the run folder, its files, the score window, seeding and the checkpoint.

A run folder holds ``config.json`` (the whole job's config), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (everything a resumed run needs to continue exactly) and, at the end,
``model.pt`` (the weights for ``shoal eval``). Every rank of a multi-process run keeps a `Run`;
only rank 0 writes, and every rank takes part in the checkpoint's gathers.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import gymnasium
import numpy as np
import torch

from shoal.core.config import Config, ConfigError
from shoal.core.fileio import write_text_atomic
from shoal.train import distributed
from shoal.train.checkpoint import (
    CHECKPOINT,
    MODEL,
    STRUCTURED_KEY,
    CheckpointError,
    atomic_torch_save,
    learner_state,
    load_file,
    model_payload,
    resolve_checkpoint,
)


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


# ---- seeding ----


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


# ---- the run folder ----


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


def read_resume_checkpoint(resume: str) -> tuple[dict[str, Any], Path]:
    """(checkpoint data, run folder) of `run.resume`: a run folder or its checkpoint file."""
    try:
        path = resolve_checkpoint(resume, prefer=CHECKPOINT)
        if path.name != CHECKPOINT and not path.name.startswith("checkpoint"):
            raise ConfigError(f"run.resume needs a {CHECKPOINT} to continue from, got {path}")
        return load_file(path), path.parent
    except (FileNotFoundError, CheckpointError) as e:
        # A usage mistake in run.resume (or --resume), reported like any other bad config value.
        raise ConfigError(f"run.resume: {e}") from None


def read_history(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Metrics lines of epochs <= `up_to_epoch` (later ones were not checkpointed).

    A torn last line (the run was killed while writing it, after its last checkpoint) is
    dropped; an unreadable line before it is an error.
    """
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    history = []
    for n, line in enumerate(lines, 1):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            m = None
        if not isinstance(m, dict):
            raise ConfigError(f"run.resume: line {n} of {path} is not a JSON record")
        if m.get("epoch", 0) <= up_to_epoch:
            history.append(m)
    return history


class Trained(NamedTuple):
    """What a checkpoint saves besides the run's progress."""

    policy: Any  # shoal.policy.Policy
    optimizers: Any  # shoal.train.optim.Optimizers
    learner: Any  # shoal.train.learner.Learner
    observation_space: gymnasium.Space
    action_space: gymnasium.Space
    # shoal.train.normalize.RewardScaler with train.reward_scale, else None.
    reward_scaler: Any = None


class Run:
    """One run's folder and progress: the epoch count (of `total_epochs`), agent steps, wall
    time, score window, time to target and metrics history, and the checkpoint that saves and
    restores them with the model. `cfg` is this process's share of `job_cfg` (the whole job's
    config); `seed` this process's seed."""

    def __init__(
        self,
        run_dir: Path,
        job_cfg: Config,
        cfg: Config,
        dist: distributed.Dist,
        trained: Trained,
        seed: int,
        total_epochs: int,
    ) -> None:
        self.dir, self.job_cfg, self.cfg, self.dist, self.trained = run_dir, job_cfg, cfg, dist, trained
        self.seed, self.total_epochs = seed, total_epochs
        self.main = dist.is_main
        self.epoch, self.agent_steps = 0, 0
        # Wall seconds of earlier sessions of this run (resumed), and of the whole run so far.
        self.wall_offset = self.wall_time = 0.0
        self.scores = ScoreWindow(100)
        # The env's return (its summed rewards, before any scaling), which differs from the
        # score in games that define one (Pong's points won, Snake's length).
        self.returns = ScoreWindow(100)
        self.time_to_target: float | None = None
        self.history: list[dict[str, Any]] = []
        self.metrics_path = run_dir / "metrics.jsonl"
        self._metrics_file: IO[str] | None = None

    # ---- start ----

    def restore(self, data: dict[str, Any]) -> None:
        """Continue from checkpoint `data`: the model, optimizer, learner, progress, random
        state and (rank 0) the metrics history up to the checkpoint's epoch."""
        policy, optimizers, learner = self.trained[:3]
        try:
            policy.load_state_dict(data["model"])
        except RuntimeError as e:
            raise ConfigError(
                f"the checkpoint in {self.dir} does not fit this config's policy: {e}"
            ) from None
        optimizers.load_state_dict(data["optimizer"])
        learner.load_state_dict(learner_state(data))
        scaler = self.trained.reward_scaler
        if scaler is not None and "reward_scaler" in data:
            scaler.load_state_dict(data["reward_scaler"])
        self.epoch, self.agent_steps = int(data["epoch"]), int(data["agent_steps"])
        self.wall_offset = self.wall_time = float(data["wall_time"])
        self.scores.load(data["score_window"])
        self.returns.load(data.get("return_window", []))
        self.time_to_target = data.get("time_to_target")
        rank_rngs = data.get("rng_ranks")
        if self.dist.enabled and rank_rngs and len(rank_rngs) == self.dist.world_size:
            set_rng_state(rank_rngs[self.dist.rank])
        else:
            set_rng_state(data["rng"])
            if self.dist.rank > 0:
                # Saved by another number of processes: keep this rank's sampling its own.
                seed_everything(self.resume_seed())
        if self.main:
            self.history = read_history(self.metrics_path, self.epoch)
            write_text_atomic(self.metrics_path, "".join(json.dumps(m) + "\n" for m in self.history))

    def resume_seed(self) -> int:
        """The env seed of a run resumed from a checkpoint at the current epoch; a deterministic
        run re-seeds its envs with it after every checkpoint too, so that both continue alike."""
        return reseed(self.seed, self.epoch)

    def __enter__(self) -> Run:
        """Write config.json and open metrics.jsonl for appending (rank 0)."""
        if self.main:
            write_text_atomic(self.dir / "config.json", json.dumps(self.job_cfg.to_dict(), indent=2) + "\n")
            self._metrics_file = open(self.metrics_path, "a")  # noqa: SIM115 (closed by __exit__)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    # ---- each epoch ----

    def record(self, metrics: dict[str, Any], target_score: float | None) -> bool:
        """Add the epoch's metrics (with its time_to_target) to the history and metrics.jsonl;
        True when the score window has just reached `target_score`."""
        reached = False
        if target_score is not None and self.time_to_target is None and self.scores.mean() >= target_score:
            self.time_to_target = self.wall_time
            reached = True
        metrics["time_to_target"] = self.time_to_target
        self.history.append(metrics)
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(metrics) + "\n")
            self._metrics_file.flush()
        return reached

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt. Every rank must call it (the ranks' random states and model
        digests are gathered); rank 0 writes."""
        ranks: dict[str, Any] = {}
        if self.dist.enabled:
            ranks = self._gather_ranks()
        if not self.main:
            return
        policy, optimizers, learner, obs_space, act_space = self.trained[:5]
        learned = learner.state_dict()
        payload = model_payload(policy, self.cfg, obs_space, act_space)
        state = {
            "model": policy.state_dict(),
            "optimizer": optimizers.state_dict(),
            # This process's share of the job's config, as in the model.pt beside it.
            "config": payload["config"],
            "epoch": self.epoch,
            "agent_steps": self.agent_steps,
            "wall_time": self.wall_time,
            # Also at the top level, where checkpoints had them before the "learner" key.
            "update": learned["update"],
            "horizon": learned["estimator"].get("horizon"),
            "score_window": self.scores.state(),
            "return_window": self.returns.state(),
            "time_to_target": self.time_to_target,
            "rng": rng_state(),
            "observation_space": payload["observation_space"],
            "action_space": payload["action_space"],
            "format": payload["format"],
            "shoal_version": payload["shoal_version"],
            "learner": learned,
            **ranks,
        }
        if STRUCTURED_KEY in payload:
            state[STRUCTURED_KEY] = payload[STRUCTURED_KEY]
        if self.trained.reward_scaler is not None:
            state["reward_scaler"] = self.trained.reward_scaler.state_dict()
        atomic_torch_save(state, self.dir / CHECKPOINT)

    def _gather_ranks(self) -> dict[str, Any]:
        gathered = self.dist.gather_objects((rng_state(), distributed.state_digest(self.trained.policy)))
        digests = [d for _, d in gathered]
        warning = distributed.digest_check(digests)
        if warning and self.main:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        return {
            "world_size": self.dist.world_size,
            "rng_ranks": [r for r, _ in gathered],
            "rank_digests": digests,
        }

    # ---- end ----

    def finish(self) -> None:
        """Make sure the run folder has a checkpoint (also when the run ended before its first
        epoch), then write model.pt."""
        # Rank 0's answer for all: the other ranks may not see the run folder.
        missing = (self.epoch == 0 or not (self.dir / CHECKPOINT).exists()) if self.main else None
        if self.dist.broadcast_object(missing):
            self.save_checkpoint()
        self.save_model()

    def save_model(self) -> None:
        """Write model.pt, the current weights for eval (rank 0)."""
        if self.main:
            policy, _, _, obs_space, act_space = self.trained[:5]
            atomic_torch_save(model_payload(policy, self.cfg, obs_space, act_space), self.dir / MODEL)
