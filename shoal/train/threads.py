"""Torch threads and the OpenMP wait policy: the thread policy at the edge of the training loop.

Torch's CPU kernels run on an OpenMP pool (libgomp on Linux). libgomp reads ``OMP_WAIT_POLICY``
once, when the library is loaded, i.e. at ``import torch``; setting the variable later changes
nothing. So the policy has to be in the environment before anything imports torch, and only the
program that owns the process may put it there:

- ``shoal train`` (shoal/cli.py) resolves ``train.omp_wait_policy`` from the config and calls
  :func:`prepare_wait_policy` before it imports the trainer; the benchmarks that take a wait
  policy do the same.
- A library user who calls ``shoal.train.train(cfg)`` from their own program decides it
  themselves: importing shoal changes no environment variable. Call
  ``shoal.train.threads.prepare_wait_policy(cfg.train.omp_wait_policy)`` (this module loads no
  torch) before the first ``import torch``, or start Python with ``OMP_WAIT_POLICY=PASSIVE``.
  Otherwise torch runs with libgomp's default (spin a few milliseconds, then sleep).
- When torch was loaded before the policy could be set, it cannot change any more:
  :func:`wait_policy_status` then reports what torch was most likely loaded with, marked
  unverified, and the trainer warns when the config asked for another one.

Why ``passive`` by default (``auto``): an ``active`` worker never stops spinning and never yields
its core, so it is faster only on a machine the run has to itself, and much slower as soon as
another process needs the cores (the C envs included); a docked libgomp worker keeps spinning
even after torch drops to 1 thread, so ``active`` cannot be undone during a run. docs/cli.md has
the measurements (``python benchmarks/wait_policy.py``).

The thread count is different: torch.set_num_threads works at any time, so with
``train.torch_threads = 0`` the trainer starts from :func:`choose_torch_threads` and, through
:func:`phase_threads`, lets a :class:`ThreadTuner` per phase of the epoch keep choosing by
measured times.

This module imports neither torch nor NumPy at import time (torch only inside the functions
the trainer calls once torch is loaded).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from shoal.core.config import ConfigError

WAIT_POLICIES = ("auto", "passive", "active")
VAR = "OMP_WAIT_POLICY"

# What shoal put into the environment before torch was loaded (lower case), or None.
_prepared: str | None = None
# Whether torch was already loaded the first time shoal could have set the policy.
_torch_was_first: bool | None = None


def torch_loaded() -> bool:
    return "torch" in sys.modules


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count() where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_torch_threads(requested: int, processes_per_machine: int = 1) -> int:
    """`requested`, or when 0: min(2, this process's share of the cores).

    Two because the policy's matrices are small (128 wide): a third and fourth thread add more
    synchronization than work, and on a shared machine every extra thread is one more that a
    busy neighbour can stall at each parallel region's barrier.
    """
    if requested < 0:
        raise ConfigError(f"train.torch_threads must be >= 0, got {requested}")
    if requested:
        return requested
    share = max(1, available_cores() // max(1, processes_per_machine))
    return min(2, share)


def _normalize(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value or None


def resolve_wait_policy(requested: str, environ: dict[str, str] | None = None) -> str:
    """'passive' or 'active' for a `train.omp_wait_policy` value.

    'auto' keeps an OMP_WAIT_POLICY the user set (passive/active) and is 'passive' otherwise.
    """
    if requested not in WAIT_POLICIES:
        choices = ", ".join(WAIT_POLICIES)
        raise ValueError(f"train.omp_wait_policy must be one of {choices}, got {requested!r}")
    if requested != "auto":
        return requested
    env = os.environ if environ is None else environ
    current = _normalize(env.get(VAR))
    return current if current in ("passive", "active") else "passive"


def prepare_wait_policy(requested: str = "auto") -> bool:
    """Put the resolved policy into the environment if torch is not loaded yet.

    Returns True when it was set in time (libgomp will read it), False when torch was already
    loaded (then nothing is changed).
    """
    global _prepared, _torch_was_first
    policy = resolve_wait_policy(requested)
    if torch_loaded():
        if _torch_was_first is None:
            _torch_was_first = True
        return False
    if _torch_was_first is None:
        _torch_was_first = False
    os.environ[VAR] = policy.upper()
    _prepared = policy
    return True


def _exec_environ(name: str) -> str | None:
    """`name` in the environment the process was started with (Linux; None elsewhere).

    /proc/self/environ is the environment at exec: later os.environ changes do not show there.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


@dataclass(frozen=True)
class WaitPolicyStatus:
    requested: str  # train.omp_wait_policy
    effective: str  # what libgomp uses: "passive", "active", "default" (unset) or "unknown"
    verified: bool  # True when shoal set it before torch loaded, or it cannot have changed
    note: str = ""  # why effective differs from what was asked, or why it is not verified

    def label(self) -> str:
        """Short text for the dashboard, e.g. 'passive' or 'active? (asked passive: ...)'."""
        text = self.effective + ("" if self.verified else "?")
        return f"{text} ({self.note})" if self.note else text


def wait_policy_status(requested: str = "auto") -> WaitPolicyStatus:
    """The OpenMP wait policy torch runs with, as far as this process can know it."""
    wanted = resolve_wait_policy(requested)
    current = _normalize(os.environ.get(VAR))
    if not torch_loaded():
        # Not loaded yet: it will read what is in the environment now.
        effective = current if current in ("passive", "active") else "default"
        return WaitPolicyStatus(requested, effective, True, _mismatch(requested, wanted, effective))
    if _prepared is not None and not _torch_was_first and current == _prepared:
        effective, verified = _prepared, True
    else:
        at_exec = _normalize(_exec_environ(VAR))
        if os.path.exists("/proc/self/environ") and at_exec == current:
            # Unchanged since the process started, so torch saw this value too.
            effective, verified = (current if current in ("passive", "active") else "default"), True
        else:
            effective = current if current in ("passive", "active") else "default"
            verified = False
    note = _mismatch(requested, wanted, effective)
    if not verified and not note:
        note = "torch was loaded before shoal could set it"
    return WaitPolicyStatus(requested, effective, verified, note)


def _mismatch(requested: str, wanted: str, effective: str) -> str:
    if effective == wanted:
        return ""
    return (
        f"asked {requested if requested == wanted else f'{requested} = {wanted}'}, but torch was "
        f"loaded first; set {VAR} before importing torch"
    )


class ThreadTuner:
    """Runs a phase of every epoch with the torch thread count that is fastest for it now.

    Why measure rather than fix a count: which count is fastest depends on the work (a rollout's
    large batches gain from a second thread where the learner's many small LSTM kernels lose to
    the synchronization) and on what else runs on the machine (each parallel region waits for
    its slowest thread, and the scheduler shares the CPU per thread), and that changes during a
    run. docs/cli.md has the measurements. So with ``train.torch_threads = 0`` (on the CPU, not
    ``train.deterministic``: results depend on the thread count in the last bits) the trainer
    keeps one tuner per phase (:func:`phase_threads`): :meth:`begin` sets the phase's count,
    :meth:`end` times it.

    After a warm-up (the first time is not counted) each candidate runs once; then the tuner
    keeps the fastest (median of each count's last 3 times) and tries the runner-up once after
    ``min_gap`` epochs, doubling the gap up to ``max_gap`` while the runner-up stays slower,
    and going back to ``min_gap`` when the kept count's time moves by more than ``drift`` from
    what it was (the machine's load changed).
    """

    def __init__(
        self,
        candidates: list[int],
        set_threads: Callable[[int], None],
        report: dict | None = None,
        key: str = "torch_threads",
        min_gap: int = 4,
        max_gap: int = 64,
        drift: float = 0.25,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not candidates:
            raise ValueError("ThreadTuner needs at least one candidate thread count")
        import time

        self.candidates = list(dict.fromkeys(candidates))
        self.set_threads = set_threads
        self.report, self.key = report, key
        self.min_gap, self.max_gap, self.drift = min_gap, max_gap, drift
        self.clock = clock or time.perf_counter
        self.samples: dict[int, list[float]] = {n: [] for n in self.candidates}
        self.current = self.best = self.candidates[0]
        self.gap = min_gap
        self.since_probe = 0
        self.reference: float | None = None
        self.timed = 0  # phases timed so far (the first is the warm-up)
        self._started: float | None = None
        if self.report is not None:
            self.report[self.key] = self.current

    @staticmethod
    def _median(values: list[float]) -> float:
        ordered = sorted(values[-3:])
        return ordered[len(ordered) // 2]

    def begin(self) -> int:
        """Start the phase: choose its thread count from the earlier ones and set it."""
        self.current = self._choose()
        self.set_threads(self.current)
        if self.report is not None:
            self.report[self.key] = self.current
        self._started = self.clock()
        return self.current

    def end(self) -> None:
        """End the phase begun last (no-op without one): record its time."""
        if self._started is None:
            return
        seconds = self.clock() - self._started
        self._started = None
        self.timed += 1
        if self.timed > 1:
            samples = self.samples[self.current]
            samples.append(seconds)
            del samples[:-3]

    def _choose(self) -> int:
        if self.timed < 1 or len(self.candidates) == 1:
            return self.current
        untried = [n for n in self.candidates if not self.samples[n]]
        if untried:
            return untried[0]
        medians = {n: self._median(s) for n, s in self.samples.items()}
        best = min(medians, key=medians.__getitem__)
        if self.current != self.best:
            # That was a probe (or the first round): keep the winner, widen the gap if it lost.
            self.gap = self.min_gap if best != self.best else min(2 * self.gap, self.max_gap)
            self.best, self.reference, self.since_probe = best, medians[best], 0
            return best
        last = self.samples[self.best][-1]
        if self.reference is None:
            self.reference = medians[self.best]
        elif abs(last - self.reference) > self.drift * self.reference:
            # The machine's load changed: compare again soon.
            self.gap, self.reference = self.min_gap, last
        self.best = best
        self.since_probe += 1
        if self.since_probe >= self.gap:
            self.since_probe = 0
            others = sorted((n for n in self.candidates if n != best), key=medians.__getitem__)
            return others[0]
        return best


# ---- the trainer's edge: configure once, then one tuner per phase ----


def configure_threads(
    torch_threads: int, omp_wait_policy: str = "auto", processes_per_machine: int = 1
) -> dict[str, Any]:
    """Set torch's intra-op threads (:func:`choose_torch_threads`) and one inter-op thread, and
    report the OpenMP wait policy torch was loaded with, warning when it is not the one asked.

    Returns the metrics' ``torch_threads``, ``torch_threads_rollout``, ``omp_wait_policy``
    (passive, active, default = libgomp's spin-then-sleep, with "?" appended when it could not
    be verified) and ``threads_tuned`` (False until :func:`phase_threads` tunes them).
    """
    import torch

    threads = choose_torch_threads(torch_threads, processes_per_machine)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        # Allowed once per process, before inter-op work starts; later calls keep the first value.
        torch.set_num_interop_threads(1)
    try:
        status = wait_policy_status(omp_wait_policy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if omp_wait_policy != "auto" and status.note:
        print(f"warning: train.omp_wait_policy: {status.note}", file=sys.stderr, flush=True)
    return {
        "torch_threads": threads,
        "torch_threads_rollout": threads,
        "omp_wait_policy": status.effective + ("" if status.verified else "?"),
        "threads_tuned": False,
    }


class PhaseThreads:
    """The phase hook the training loop calls around each phase of an epoch:
    ``with hook.phase("rollout"): ...``. This base class keeps the threads fixed. `info` holds
    the metrics' thread keys (:func:`configure_threads`)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


class TunedPhaseThreads(PhaseThreads):
    """Runs each phase with its own :class:`ThreadTuner` choosing between the automatic count
    and 1 thread; the tuners keep `info`'s counts up to date (``torch_threads_rollout`` for
    "rollout", ``torch_threads`` for "update")."""

    KEYS = {"rollout": "torch_threads_rollout", "update": "torch_threads"}

    def __init__(self, info: dict[str, Any]) -> None:
        import torch

        super().__init__(info)
        info["threads_tuned"] = True
        candidates = [info["torch_threads"], 1]
        self.tuners = {
            name: ThreadTuner(candidates, torch.set_num_threads, info, key=key)
            for name, key in self.KEYS.items()
        }

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        tuner = self.tuners[name]
        tuner.begin()
        try:
            yield
        finally:
            tuner.end()


def phase_threads(train_cfg: Any, device_type: str, info: dict[str, Any]) -> PhaseThreads:
    """The loop's phase hook for the threads `info` reports (:func:`configure_threads`): tuned
    per phase only with train.torch_threads = 0, on the CPU, with at least 2 threads, not
    train.deterministic and not train.compile (compiled code is specialized to the thread count,
    so every switch would recompile); else fixed."""
    fixed = train_cfg.torch_threads != 0 or train_cfg.deterministic or train_cfg.compile
    if fixed or device_type != "cpu" or info["torch_threads"] < 2:
        return PhaseThreads(info)
    return TunedPhaseThreads(info)
