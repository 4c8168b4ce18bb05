"""Data-parallel training across processes started by torchrun (torch.distributed).

Every rank steps its own envs and runs the same update on its own batch; the ranks average their
gradients before each optimizer step and merge their observation statistics, so the parameters
stay identical everywhere. Rank 0 alone writes the run folder. Without torchrun's environment
(WORLD_SIZE > 1 with RANK, LOCAL_RANK and MASTER_ADDR) nothing here touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from shoal.core.config import ConfigError
from shoal.core.episodes import merge_episode_logs

TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")
# Env seeds of rank r start at seed + r * RANK_SEED_STRIDE: far enough apart that the per-env
# seeds (seed + env index) of different ranks never overlap.
RANK_SEED_STRIDE = 1_000_003
# Gradients are all-reduced in buckets of at most this many elements, to bound the extra memory.
BUCKET_ELEMENTS = 1 << 24


def torchrun_world() -> tuple[int, int, int] | None:
    """(world size, rank, local rank) from torchrun's environment; None when not launched by it
    or when there is only one process."""
    if not all(os.environ.get(k) for k in TORCHRUN_VARS):
        return None
    try:
        world, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        values = {k: os.environ[k] for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        raise ConfigError(
            f"torchrun's WORLD_SIZE, RANK and LOCAL_RANK must be integers, got {values}"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK must be in [0, WORLD_SIZE={world}), got {rank}")
    return world, rank, local


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    """This process's place in the job. The single-process default does no communication."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """This rank's seed for envs and sampling (rank 0 keeps `seed`, as a single process)."""
        return seed + self.rank * RANK_SEED_STRIDE

    # ---- collectives (no-ops with one process) ----

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (obs-normalization statistics too)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                torch_dist.broadcast(tensor.data, src=0)

    def all_reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each parameter's gradient with its mean over the ranks.

        Called after gradient accumulation and before clipping, so that every rank clips and
        steps with the same gradient. Parameters without a gradient are skipped; all ranks run
        the same code, so they skip the same ones.
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        for bucket in _buckets(grads, BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            offset = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n

    def merge_batch_stats(
        self, count: int, mean: torch.Tensor, var: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Combine each rank's batch (count, mean, population variance) into the whole job's."""
        if not self.enabled:
            return count, mean, var
        if count == 0:
            mean, var = torch.zeros_like(mean), torch.zeros_like(var)
        n = torch.tensor([float(count)], dtype=torch.float64, device=mean.device)
        weighted = torch.cat([n, mean.double() * count])
        torch_dist.all_reduce(weighted, op=torch_dist.ReduceOp.SUM)
        total = weighted[0]
        global_mean = weighted[1:] / total
        # Within-rank spread plus the spread of the rank means around the global mean.
        spread = (var.double() + (mean.double() - global_mean).pow(2)) * count
        torch_dist.all_reduce(spread, op=torch_dist.ReduceOp.SUM)
        return int(total.item()), global_mean.to(mean.dtype), (spread / total).to(var.dtype)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (a new tensor; `tensor` itself is left as it is)."""
        if not self.enabled:
            return tensor
        total = tensor.clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    def sum_floats(self, values: Iterable[float], device: torch.device) -> list[float]:
        """Elementwise sums over the ranks."""
        values = list(values)
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.tolist()

    def merge_epoch_log(self, sps: float, log: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """The whole job's epoch: every rank's steps/s summed, and their episode logs merged
        (means weighted by episode counts)."""
        if not self.enabled:
            return sps, log
        gathered = self.gather_objects((sps, log))
        return sum(rank_sps for rank_sps, _ in gathered), merge_episode_logs(g for _, g in gathered)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on some rank."""
        return self.sum_floats([1.0 if flag else 0.0], device)[0] > 0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def close(self, synchronize: bool = False) -> None:
        """Leave the process group. With `synchronize` (a run that ended normally on this rank)
        first wait for every rank: a rank that tore gloo down while another still talked to it
        was seen to abort ("terminate called without an active exception"). Never after an
        error, where the other ranks may be gone and a barrier could wait for them."""
        if self.initialized and torch_dist.is_initialized():
            if synchronize:
                with contextlib.suppress(RuntimeError):
                    torch_dist.barrier()
            torch_dist.destroy_process_group()
        self.initialized = False


def _buckets(tensors: list[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of the same dtype and device, each of at most `limit` elements (or one
    larger tensor alone)."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = out[-1] if out else None
        if last is None or size + t.numel() > limit or (t.dtype, t.device) != (last[0].dtype, last[0].device):
            out.append([t])
            size = t.numel()
        else:
            last.append(t)
            size += t.numel()
    return out


def setup(device_name: str) -> tuple[Dist, str]:
    """Join the torchrun job, if this process is part of one.

    Returns the Dist and the device name to use: with CUDA, each process on a machine takes the
    GPU of its LOCAL_RANK unless `device_name` names one (cuda:N). The backend follows the
    device: NCCL for CUDA, Gloo for the CPU.
    """
    world = torchrun_world()
    if world is None:
        return Dist(), device_name
    world_size, rank, local_rank = world
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if device_name in ("auto", "cuda"):
            device_name = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device_name))
    if not torch_dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed, which multi-process training needs")
    initialized_here = False
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
        initialized_here = True
    return Dist(world_size, rank, local_rank, initialized_here), device_name


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers, by name); equal on every rank while
    the ranks are in sync."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest_check(digests: list[str]) -> str | None:
    """A warning when the ranks' model digests differ (None when they agree)."""
    if len(set(digests)) <= 1:
        return None
    return "ranks out of sync: their model digests differ: " + ", ".join(
        f"rank {r} {d[:12]}" for r, d in enumerate(digests)
    )
