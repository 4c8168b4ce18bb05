"""`train.processes`: data-parallel training on one machine, started by `shoal train` itself.

With ``train.processes = N > 1``, ``shoal train`` runs itself again under ``torch.distributed.run
--standalone`` with N local processes (what ``torchrun --standalone --nproc-per-node N -m shoal
train ...`` does by hand). Unlike a plain torchrun job, whose every process takes the whole
``env.num_envs`` and ``train.batch_size``, the config here describes the whole job: each process
gets 1/N of the envs, of the batch and of each minibatch, so the same file learns the same way
with 1 or N processes (the ranks average their gradients, which is the gradient of the whole
minibatch) and only the wall-clock time changes.

Why processes rather than more threads: on a small CPU each OpenMP parallel region of a
128-wide policy costs a wake-up and a barrier of all its threads, and the LSTM's training pass
runs hundreds of them per minibatch. One thread per process runs them all without
synchronization; the processes meet only to average gradients (once per minibatch).

This module imports torch only to start the processes (torch.distributed.run's launcher).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from shoal.core.config import Config, ConfigError

# Keys divided among the processes; each must be a multiple of train.processes.
SPLIT_KEYS = (
    ("env", "num_envs"),
    ("train", "batch_size"),
    ("train", "minibatch_size"),
    ("train", "max_minibatch_size"),
)


def check_processes(cfg: Config) -> int:
    """train.processes, checked: at least 1, and dividing every key that is split."""
    processes = cfg.train.processes
    if processes < 1:
        raise ConfigError(f"train.processes must be >= 1, got {processes}")
    if processes > 1:
        for section, key in SPLIT_KEYS:
            value = getattr(getattr(cfg, section), key)
            if value % processes:
                raise ConfigError(
                    f"{section}.{key} ({value}) must be a multiple of train.processes ({processes}): "
                    "each process takes an equal share of it"
                )
    return processes


def split_config(cfg: Config, world_size: int) -> Config:
    """This process's share of the job: `cfg` itself with one process or with train.processes = 1
    (torchrun's per-process sizes); else a copy with the split keys divided by the processes,
    and an automatic env.num_threads (0) set to this process's share of the cores.

    Raises ConfigError when train.processes > 1 does not match the processes actually running.
    """
    processes = check_processes(cfg)
    if processes == 1:
        return cfg
    if world_size == 1:
        raise ConfigError(
            f"train.processes = {processes} needs its processes: 'shoal train' starts them; "
            "train() called directly runs one process (set train.processes = 1 there)"
        )
    if world_size != processes:
        raise ConfigError(
            f"train.processes = {processes}, but {world_size} process(es) are running; under your own "
            "torchrun leave train.processes at 1 (each process then takes the whole env.num_envs "
            "and train.batch_size) or set it to the number of processes"
        )
    from shoal.train.threads import available_cores

    local = cfg.copy()
    for section, key in SPLIT_KEYS:
        part = getattr(local, section)
        setattr(part, key, getattr(part, key) // processes)
    if local.env.num_threads == 0:
        # The env's automatic thread count would take every core in each process.
        local.env.num_threads = max(1, available_cores() // processes)
    return local


def launched() -> bool:
    """True inside a torchrun job (this process is one of its ranks)."""
    return bool(os.environ.get("WORLD_SIZE")) and bool(os.environ.get("RANK"))


def launcher_args(processes: int, program: Sequence[str]) -> list[str]:
    """torch.distributed.run's arguments that run `program` (``-m shoal train ...``, or a script
    and its arguments) as `processes` local ranks."""
    return ["--standalone", f"--nproc-per-node={processes}", *program]


def command(processes: int, program: Sequence[str]) -> list[str]:
    """The command line of launcher_args: ``python -m torch.distributed.run ...``."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args(processes, program)]


def omp_threads(processes: int) -> str:
    """OMP_NUM_THREADS for each of `processes` ranks: its share of the cores. torchrun sets 1,
    with a banner, when the variable is unset; the trainer picks its threads anyway
    (train.torch_threads), so setting it keeps the launch quiet."""
    from shoal.train.threads import available_cores

    return str(max(1, available_cores() // processes))


def run_processes(processes: int, argv: Sequence[str]) -> int:
    """Run ``shoal <argv>`` as `processes` ranks and wait; returns their exit status.

    torch.distributed.run's launcher runs in this process, so that its ways of ending are
    turned into an exit status here instead of its traceback: Ctrl-C (which reaches the ranks
    too; they stop as a single process would) gives 130, and a rank that fails ends the others
    and gives that rank's status (it has printed its own error).
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", omp_threads(processes))
    # The launcher's notices (closing signals, a rank's exit code) say nothing the ranks have
    # not said.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(launcher_args(processes, ["-m", "shoal", *argv])))
    except SignalException:
        return 130
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        return next((c for c in codes if c > 0), 1)
    except KeyboardInterrupt:
        return 130
    return 0
