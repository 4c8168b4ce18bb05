"""Vectorization backends: many copies of a vector env behind one vector env.

`make(creator, backend=..., num_envs=..., num_workers=...)` splits `num_envs` into
`num_workers` equal chunks and builds one vector env per chunk with
`creator(num_envs=chunk, seed=seed + w * chunk, **env_kwargs)` (a native env holding several
copies, or an emulated Gymnasium/PettingZoo env). The result follows the vector-env contract of
docs/architecture.md section 1.

- "serial": the chunks live in this process and are stepped in turn; their results are copied
  into buffers allocated once.
- "multiprocessing": one worker process per chunk, started with "spawn" or "forkserver" (fork is
  unsafe once torch has started threads). Every buffer lives in one shared-memory block; the
  parent and a worker exchange one-byte commands over a pipe, and pickle only the rare infos and
  episode statistics, never arrays. `send(actions)` / `recv()` are asynchronous: `recv` returns
  the first `batch_size` envs whose step is done, with `agent_ids` naming their rows, so the
  trainer can run inference on one batch while the workers step the other.

Async protocol (both backends): after `reset()` every env's result is ready. `send(actions)`
takes actions for the agents of the last `recv()` (or for all agents right after `reset()` or
`step()`), `recv()` returns a `Batch`. `step(actions)` is send+recv over all envs.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import multiprocessing.connection
import numbers
import pickle
import signal
import struct
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from gymnasium import spaces

from shoal.emulation import check_actions
from shoal.envs.native import Batch

BACKENDS = ("serial", "multiprocessing")
CONTEXTS = ("spawn", "forkserver")

# Commands (parent -> worker) and replies (worker -> parent): the first byte of a message.
_STEP, _RESET, _RENDER, _CLOSE = b"S", b"R", b"D", b"C"
_OK, _PAYLOAD, _TEXT, _ERROR = b"K", b"P", b"T", b"E"
# The least time a worker gets to start and build its envs, whatever `timeout` says.
_START_TIMEOUT = 120.0


class _NamedEnv:
    """A picklable creator for `shoal.make(name, ...)` (native or "gym:"/"pettingzoo:" names)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, num_envs: int, seed: int, **kwargs: Any) -> Any:
        import shoal

        return shoal.make(self.name, num_envs=num_envs, seed=seed, **kwargs)

    def __repr__(self) -> str:
        return f"shoal.make({self.name!r})"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected {name} to be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"expected {name} >= 1, got {value}")
    return int(value)


def _check_layout(num_envs: Any, num_workers: Any, batch_size: Any) -> tuple[int, int, int]:
    num_envs = _positive_int("num_envs", num_envs)
    num_workers = _positive_int("num_workers", num_workers)
    if num_envs % num_workers:
        raise ValueError(
            f"num_envs ({num_envs}) must be a multiple of num_workers ({num_workers}) so that every worker "
            "gets the same number of envs"
        )
    envs_per_worker = num_envs // num_workers
    batch_size = num_envs if batch_size is None else _positive_int("batch_size", batch_size)
    if batch_size > num_envs or batch_size % envs_per_worker or num_envs % batch_size:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of the envs per worker ({envs_per_worker} = "
            f"num_envs {num_envs} / num_workers {num_workers}) that divides num_envs"
        )
    return num_envs, num_workers, batch_size


def _describe(env: Any, expected_envs: int) -> dict[str, Any]:
    """What the parent needs to know about a chunk's env: sizes, spaces, dtypes."""
    missing = [
        name
        for name in ("num_envs", "agents_per_env", "single_observation_space", "single_action_space",
                     "observations", "reset", "step", "log", "close")
        if not hasattr(env, name)
    ]
    if missing:
        raise TypeError(
            f"the creator must return a Shoal vector env; got {type(env).__name__} without "
            f"{', '.join(missing)}"
        )
    if env.num_envs != expected_envs:
        raise ValueError(f"the creator was asked for {expected_envs} envs but returned {env.num_envs}")
    obs_space = env.single_observation_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise TypeError(f"expected a flat Box observation space, got {obs_space}")
    action_space = env.single_action_space
    if not isinstance(action_space, spaces.Discrete | spaces.MultiDiscrete | spaces.Box):
        raise TypeError(f"expected a Discrete, MultiDiscrete or Box action space, got {action_space}")
    return {
        "num_envs": int(env.num_envs),
        "agents_per_env": int(env.agents_per_env),
        "observation_space": obs_space,
        "action_space": action_space,
        "obs_dtype": np.dtype(env.observations.dtype),
        "unflatten": getattr(env, "unflatten", None),
    }


def _action_layout(space: spaces.Space, num_agents: int) -> tuple[tuple[int, ...], np.dtype]:
    if isinstance(space, spaces.Box):
        return (num_agents, *space.shape), np.dtype(np.float32)
    if isinstance(space, spaces.Discrete):
        return (num_agents,), np.dtype(np.int32)
    return (num_agents, int(np.asarray(space.nvec).size)), np.dtype(np.int32)


def _buffer_specs(meta: dict[str, Any], num_agents: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    obs_shape = (num_agents, int(meta["observation_space"].shape[0]))
    return {
        "observations": (obs_shape, meta["obs_dtype"]),
        "final_observations": (obs_shape, meta["obs_dtype"]),
        "rewards": ((num_agents,), np.dtype(np.float32)),
        "terminals": ((num_agents,), np.dtype(np.bool_)),
        "truncations": ((num_agents,), np.dtype(np.bool_)),
        "masks": ((num_agents,), np.dtype(np.bool_)),
        "actions": _action_layout(meta["action_space"], num_agents),
    }


class _LogSums:
    """Episode statistics from several envs, weighted by each env's episode count."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.episodes = 0.0

    def add(self, stats: dict[str, Any] | None) -> None:
        if not stats:
            return
        n = float(stats.get("episodes", 0))
        if n <= 0:
            return
        self.episodes += n
        for key, value in stats.items():
            if key != "episodes" and isinstance(value, numbers.Real):
                self.sums[key] = self.sums.get(key, 0.0) + float(value) * n

    def pop(self) -> dict[str, float | int]:
        if self.episodes <= 0:
            return {}
        out: dict[str, float | int] = {key: total / self.episodes for key, total in self.sums.items()}
        out["episodes"] = int(self.episodes) if self.episodes.is_integer() else self.episodes
        self.sums, self.episodes = {}, 0.0
        return out


class _WorkerVecEnv:
    """The async bookkeeping shared by both backends.

    Each worker (a chunk of envs) is in one of three states: busy (stepping), ready (a result
    not yet handed to the trainer, queued in the order it arrived) or held (handed out by the
    last recv(), waiting for actions).
    """

    backend = ""

    def __init__(self, num_envs: int, num_workers: int, batch_size: int, seed: int) -> None:
        self.num_envs = num_envs
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.envs_per_worker = num_envs // num_workers
        self.seed = seed
        self._ready: collections.deque[int] = collections.deque()
        self._held: list[int] = []
        self._busy: set[int] = set()
        self._worker_infos: list[list[dict]] = [[] for _ in range(num_workers)]
        self._log = _LogSums()
        self._reset_done = False
        self._closed = False
        self._broken: str | None = None

    def _setup(self, meta: dict[str, Any], buffers: dict[str, np.ndarray]) -> None:
        self.agents_per_env = meta["agents_per_env"]
        self.num_agents = self.num_envs * self.agents_per_env
        self.agents_per_worker = self.envs_per_worker * self.agents_per_env
        self.single_observation_space: spaces.Box = meta["observation_space"]
        self.single_action_space: spaces.Space = meta["action_space"]
        self.unflatten: Callable[[Any], Any] | None = meta["unflatten"]
        self.observations = buffers["observations"]
        self.final_observations = buffers["final_observations"]
        self.rewards = buffers["rewards"]
        self.terminals = buffers["terminals"]
        self.truncations = buffers["truncations"]
        self.masks = buffers["masks"]
        self._actions = buffers["actions"]
        self.agent_ids = np.arange(self.num_agents, dtype=np.int64)
        # Gather buffers for batches whose workers are not neighbours (multiprocessing only).
        rows = (self.batch_size // self.envs_per_worker) * self.agents_per_worker
        self._gathered = {
            name: np.zeros((rows, *buffers[name].shape[1:]), dtype=buffers[name].dtype)
            for name in ("observations", "rewards", "terminals", "truncations", "final_observations", "masks")
        }
        self._gathered_ids = np.zeros(rows, dtype=np.int64)
        self._worker_rows = np.arange(self.agents_per_worker, dtype=np.int64)

    # ---- backend hooks ----

    def _launch_step(self, workers: Sequence[int]) -> None:
        raise NotImplementedError

    def _launch_reset(self, seed: int | None) -> None:
        raise NotImplementedError

    def _collect(self) -> None:
        """Block until at least one busy worker finished; move it to the ready queue."""
        raise NotImplementedError

    # ---- helpers ----

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {self.backend} vector env is closed")
        if self._broken is not None:
            raise RuntimeError(
                f"this {self.backend} vector env failed earlier and must be closed: {self._broken}"
            )

    def _rows(self, workers: Sequence[int]) -> slice | np.ndarray:
        """Agent rows of `workers` (sorted): a slice when they are neighbours, else indices."""
        first, count = workers[0], len(workers)
        if workers[-1] - first == count - 1:
            return slice(first * self.agents_per_worker, (first + count) * self.agents_per_worker)
        ids = self._gathered_ids[: count * self.agents_per_worker]
        for k, w in enumerate(workers):
            np.add(self._worker_rows, w * self.agents_per_worker,
                   out=ids[k * self.agents_per_worker:(k + 1) * self.agents_per_worker])
        return ids

    def _infos_of(self, workers: Sequence[int]) -> list[dict]:
        infos: list[dict] = []
        for w in workers:
            if self._worker_infos[w]:
                infos.extend(self._worker_infos[w])
                self._worker_infos[w] = []
        return infos

    def _wait_all(self) -> None:
        while self._busy:
            self._collect()

    # ---- the contract ----

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        self._check_usable()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"expected an integer seed or None, got {seed!r}")
        self._wait_all()
        if seed is None and not self._reset_done:
            seed = self.seed
        self._ready.clear()
        self._held = []
        self._worker_infos = [[] for _ in range(self.num_workers)]
        self._launch_reset(None if seed is None else int(seed))
        self._wait_all()
        self._ready = collections.deque(range(self.num_workers))
        self._reset_done = True
        return self.observations, self._infos_of(range(self.num_workers))

    def send(self, actions: Any) -> None:
        self._check_usable()
        if not self._reset_done:
            raise RuntimeError("call reset() before send()")
        if self._held:
            workers = self._held
        elif not self._busy and len(self._ready) == self.num_workers:
            workers = list(range(self.num_workers))
        else:
            raise RuntimeError(
                "send() expects actions for the agents of the last recv(), but there is no batch to answer; "
                "call recv() first"
            )
        rows = self._rows(workers)
        count = len(workers) * self.agents_per_worker
        checked = check_actions(actions, self.single_action_space, count)
        self._actions[rows] = checked.reshape((count, *self._actions.shape[1:]))
        self._held = []
        if len(workers) == self.num_workers:
            self._ready.clear()
        self._busy.update(workers)
        self._launch_step(workers)

    def recv(self) -> Batch:
        self._check_usable()
        if not self._reset_done:
            raise RuntimeError("call reset() before recv()")
        if self._held:
            raise RuntimeError("recv() called twice without send(); send actions for the last batch first")
        count = self.batch_size // self.envs_per_worker
        while len(self._ready) < count:
            if not self._busy:
                raise RuntimeError("recv() has nothing to wait for; call send(actions) first")
            self._collect()
        workers = sorted(self._ready.popleft() for _ in range(count))
        self._held = workers
        rows = self._rows(workers)
        infos = self._infos_of(workers)
        if isinstance(rows, slice):
            return Batch(
                self.observations[rows], self.rewards[rows], self.terminals[rows], self.truncations[rows],
                self.final_observations[rows], infos, self.agent_ids[rows], self.masks[rows],
            )
        g = self._gathered
        for name in g:
            np.take(getattr(self, name), rows, axis=0, out=g[name])
        return Batch(
            g["observations"], g["rewards"], g["terminals"], g["truncations"],
            g["final_observations"], infos, rows, g["masks"],
        )

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        self._check_usable()
        if not self._reset_done:
            raise RuntimeError("call reset() before step()")
        if self._busy:
            raise RuntimeError("step() cannot run while a send() is in flight; call recv() first")
        checked = check_actions(actions, self.single_action_space, self.num_agents)
        self._actions[:] = checked.reshape(self._actions.shape)
        workers = list(range(self.num_workers))
        self._ready.clear()
        self._held = []
        self._busy.update(workers)
        self._launch_step(workers)
        self._wait_all()
        self._ready.clear()
        # The whole batch is now with the trainer, so send() may follow with all actions.
        self._held = workers
        return self.observations, self.rewards, self.terminals, self.truncations, self._infos_of(workers)

    def log(self) -> dict[str, float | int]:
        self._check_usable()
        self._gather_logs()
        return self._log.pop()

    def _gather_logs(self) -> None:
        """Serial envs are asked here; workers report with each step instead."""

    def __enter__(self) -> _WorkerVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, num_workers={self.num_workers}, "
            f"batch_size={self.batch_size})"
        )


# ---------------------------------------------------------------------------------------------
# Serial
# ---------------------------------------------------------------------------------------------


class SerialVecEnv(_WorkerVecEnv):
    """Chunks built in this process and stepped one after the other."""

    backend = "serial"

    def __init__(
        self,
        creator: Callable[..., Any],
        num_envs: int,
        num_workers: int,
        batch_size: int,
        seed: int,
        env_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(num_envs, num_workers, batch_size, seed)
        self.envs: list[Any] = []
        try:
            metas = []
            for w in range(num_workers):
                chunk_seed = seed + w * self.envs_per_worker
                env = creator(num_envs=self.envs_per_worker, seed=chunk_seed, **env_kwargs)
                self.envs.append(env)
                metas.append(_describe(env, self.envs_per_worker))
            _check_same(metas)
            meta = metas[0]
            num_agents = num_envs * meta["agents_per_env"]
            specs = _buffer_specs(meta, num_agents)
            buffers = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in specs.items()}
            buffers["masks"][:] = True
            self._setup(meta, buffers)
        except BaseException:
            self._close_envs()
            raise

    def _copy_out(self, w: int, result: tuple) -> None:
        env = self.envs[w]
        rows = slice(w * self.agents_per_worker, (w + 1) * self.agents_per_worker)
        obs, rewards, terminals, truncations = result[:4]
        self.observations[rows] = obs
        self.rewards[rows] = rewards
        self.terminals[rows] = terminals
        self.truncations[rows] = truncations
        if truncations.any():
            self.final_observations[rows] = env.final_observations
        masks = getattr(env, "masks", None)
        if masks is not None:
            self.masks[rows] = masks

    def _launch_step(self, workers: Sequence[int]) -> None:
        try:
            for w in workers:
                rows = slice(w * self.agents_per_worker, (w + 1) * self.agents_per_worker)
                result = self.envs[w].step(self._actions[rows])
                self._copy_out(w, result)
                self._worker_infos[w] = list(result[4])
                self._busy.discard(w)
                self._ready.append(w)
        finally:
            # After an env raised, the workers it left behind are neither busy nor ready: reset() recovers.
            self._busy.difference_update(workers)

    def _launch_reset(self, seed: int | None) -> None:
        for w, env in enumerate(self.envs):
            obs, infos = env.reset(seed=None if seed is None else seed + w * self.envs_per_worker)
            rows = slice(w * self.agents_per_worker, (w + 1) * self.agents_per_worker)
            self.observations[rows] = obs
            self.rewards[rows] = 0.0
            self.terminals[rows] = False
            self.truncations[rows] = False
            masks = getattr(env, "masks", None)
            if masks is not None:
                self.masks[rows] = masks
            self._worker_infos[w] = list(infos)

    def _collect(self) -> None:
        # Serial steps finish inside _launch_step; nothing can still be busy.
        raise RuntimeError("internal error: a serial worker is busy")

    def _gather_logs(self) -> None:
        for env in self.envs:
            self._log.add(env.log())

    def render(self) -> str:
        self._check_usable()
        return self.envs[0].render()

    def _close_envs(self) -> None:
        errors = []
        for env in self.envs:
            try:
                env.close()
            except Exception as exc:  # close the rest before reporting
                errors.append(exc)
        self.envs = []
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_envs()


def _check_same(metas: list[dict[str, Any]]) -> None:
    first = metas[0]
    for w, meta in enumerate(metas[1:], start=1):
        for key in ("agents_per_env", "observation_space", "action_space", "obs_dtype"):
            if meta[key] != first[key]:
                raise ValueError(f"worker {w}'s env has {key} {meta[key]}, but worker 0's has {first[key]}")


# ---------------------------------------------------------------------------------------------
# Multiprocessing
# ---------------------------------------------------------------------------------------------


def _views(buf: memoryview, layout: dict[str, tuple[int, tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buf, offset=offset)
        for name, (offset, shape, dtype) in layout.items()
    }


def _worker_main(
    index: int,
    creator: Callable[..., Any],
    num_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    conn: mp.connection.Connection,
) -> None:
    """A worker process: build the chunk's env, then serve commands until told to close."""
    # Ctrl-C reaches the whole process group; the parent handles it and closes the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = None
    shm = None
    views: dict[str, np.ndarray] = {}
    try:
        env = creator(num_envs=num_envs, seed=seed, **env_kwargs)
        conn.send(_describe(env, num_envs))
        setup = conn.recv_bytes()
        if setup == _CLOSE:  # the parent gave up before handing out the buffers
            return
        shm_name, layout, start, stop = pickle.loads(setup)
        shm = shared_memory.SharedMemory(name=shm_name)
        views = {name: view[start:stop] for name, view in _views(shm.buf, layout).items()}
        obs, final_obs = views["observations"], views["final_observations"]
        rewards, terminals, truncations = views["rewards"], views["terminals"], views["truncations"]
        masks, actions = views["masks"], views["actions"]
        env_masks = getattr(env, "masks", None)
        conn.send_bytes(_OK)
        while True:
            message = conn.recv_bytes()
            command = message[:1]
            if command == _STEP:
                result = env.step(actions)
                obs[:] = result[0]
                rewards[:] = result[1]
                terminals[:] = result[2]
                truncations[:] = result[3]
                if truncations.any():
                    final_obs[:] = env.final_observations
                if env_masks is not None:
                    masks[:] = env_masks
                infos, stats = list(result[4]), env.log()
                if infos or stats:
                    conn.send_bytes(_PAYLOAD + pickle.dumps((infos, stats), protocol=pickle.HIGHEST_PROTOCOL))
                else:
                    conn.send_bytes(_OK)
            elif command == _RESET:
                reset_seed = struct.unpack("<q", message[1:])[0] if len(message) > 1 else None
                result = env.reset(seed=reset_seed)
                obs[:] = result[0]
                rewards[:] = 0.0
                terminals[:] = False
                truncations[:] = False
                if env_masks is not None:
                    masks[:] = env_masks
                infos = list(result[1])
                if infos:
                    conn.send_bytes(_PAYLOAD + pickle.dumps((infos, None), protocol=pickle.HIGHEST_PROTOCOL))
                else:
                    conn.send_bytes(_OK)
            elif command == _RENDER:
                conn.send_bytes(_TEXT + str(env.render()).encode())
            elif command == _CLOSE:
                return
            else:
                raise RuntimeError(f"unknown command {command!r} from the parent")
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        # The parent is gone or interrupting us: nobody is left to report to.
        return
    except BaseException as exc:
        report = (type(exc).__name__, str(exc), traceback.format_exc())
        with contextlib.suppress(Exception):
            conn.send_bytes(_ERROR + pickle.dumps(report))
    finally:
        views.clear()
        obs = final_obs = rewards = terminals = truncations = masks = actions = None
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
        if shm is not None:
            with contextlib.suppress(BufferError):
                shm.close()


def _shutdown(resources: dict[str, Any]) -> None:
    """Stop the workers and free the shared memory; safe to call twice and after errors."""
    procs: list[Any] = resources["procs"]
    conns: list[mp.connection.Connection] = resources["conns"]
    for proc, conn in zip(procs, conns, strict=False):
        if proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                conn.send_bytes(_CLOSE)
    deadline = time.monotonic() + resources["patience"]
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
    for proc in procs:
        proc.close()
    procs.clear()
    conns.clear()
    shm = resources.get("shm")
    resources["shm"] = None
    if shm is not None:
        # BufferError: someone still holds a view of the buffers; the mapping goes with the last view.
        with contextlib.suppress(BufferError):
            shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()


class MultiprocessingVecEnv(_WorkerVecEnv):
    """One worker process per chunk; buffers in shared memory; async send/recv."""

    backend = "multiprocessing"

    def __init__(
        self,
        creator: Callable[..., Any],
        num_envs: int,
        num_workers: int,
        batch_size: int,
        seed: int,
        env_kwargs: dict[str, Any],
        context: str = "spawn",
        timeout: float | None = 600.0,
    ) -> None:
        super().__init__(num_envs, num_workers, batch_size, seed)
        if context not in CONTEXTS:
            raise ValueError(
                f"expected context in {CONTEXTS} (fork is unsafe once torch has started threads), "
                f"got {context!r}"
            )
        if timeout is not None and not (isinstance(timeout, numbers.Real) and timeout > 0):
            raise ValueError(f"expected timeout > 0 seconds or None, got {timeout!r}")
        self.timeout = None if timeout is None else float(timeout)
        ctx = mp.get_context(context)
        # patience: seconds close() waits for workers to exit by themselves (none after a timeout).
        self._resources: dict[str, Any] = {"procs": [], "conns": [], "shm": None, "patience": 5.0}
        self._procs: list[Any] = self._resources["procs"]
        self._conns: list[mp.connection.Connection] = self._resources["conns"]
        self._finalizer = weakref.finalize(self, _shutdown, self._resources)
        try:
            for w in range(num_workers):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(w, creator, self.envs_per_worker, seed + w * self.envs_per_worker, env_kwargs,
                          child_conn),
                    name=f"shoal-worker-{w}",
                    daemon=True,
                )
                try:
                    proc.start()
                except (pickle.PicklingError, AttributeError, TypeError) as exc:
                    raise TypeError(
                        "the multiprocessing backend sends the creator and env_kwargs to its workers, so "
                        f"they must be picklable (a module-level function or functools.partial): {exc}"
                    ) from exc
                finally:
                    child_conn.close()
                self._procs.append(proc)
                self._conns.append(parent_conn)
            self.worker_pids = [proc.pid for proc in self._procs]
            metas = [self._handshake(w) for w in range(num_workers)]
            _check_same(metas)
            meta = metas[0]
            num_agents = num_envs * meta["agents_per_env"]
            layout: dict[str, tuple[int, tuple[int, ...], str]] = {}
            offset = 0
            for name, (shape, dtype) in _buffer_specs(meta, num_agents).items():
                layout[name] = (offset, shape, dtype.str)
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                offset += (nbytes + 63) // 64 * 64  # keep every buffer cache-line aligned
            shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
            self._resources["shm"] = shm
            buffers = _views(shm.buf, layout)
            buffers["masks"][:] = True
            self._setup(meta, buffers)
            for w, conn in enumerate(self._conns):
                rows = (w * self.agents_per_worker, (w + 1) * self.agents_per_worker)
                conn.send_bytes(pickle.dumps((shm.name, layout, *rows)))
            self._busy.update(range(num_workers))
            self._wait_all()
            self._ready.clear()
        except BaseException:
            self._release_views()
            self._finalizer()
            raise

    # ---- talking to workers ----

    def _fail(self, message: str) -> RuntimeError:
        self._broken = message
        return RuntimeError(message)

    def _dead(self, w: int) -> RuntimeError:
        proc = self._procs[w]
        proc.join(1.0)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        elif code is None:
            how = "closed its pipe but is still running"
        else:
            how = f"exited with code {code}"
        return self._fail(f"{self.backend} worker {w} (pid {proc.pid}) {how} without reporting an error")

    def _raise_worker_error(self, w: int, payload: bytes) -> None:
        name, text, tb = pickle.loads(payload)
        raise self._fail(
            f"{self.backend} worker {w} raised {name}: {text}\n--- worker {w} traceback ---\n{tb}"
        )

    def _read(self, w: int) -> bytes:
        try:
            message = self._conns[w].recv_bytes()
        except (EOFError, OSError):
            raise self._dead(w) from None
        if message[:1] == _ERROR:
            self._raise_worker_error(w, message[1:])
        return message

    def _wait_for(self, workers: Sequence[int], timeout: float | None) -> list[int]:
        """Wait until one of `workers` has a message (or died); return those with messages."""
        conns = {self._conns[w]: w for w in workers}
        sentinels = {self._procs[w].sentinel: w for w in workers}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = mp.connection.wait([*conns, *sentinels], timeout=remaining)
            with_data = sorted({conns[obj] for obj in ready if obj in conns})
            if with_data:
                return with_data
            for obj in ready:
                w = sentinels[obj]
                if not self._conns[w].poll():
                    raise self._dead(w)
            if deadline is not None and time.monotonic() >= deadline:
                self._resources["patience"] = 0.0
                raise self._fail(
                    f"{self.backend} workers {sorted(workers)} did not answer within {timeout:g} s "
                    "(raise `timeout` for slow envs)"
                )

    def _handshake(self, w: int) -> dict[str, Any]:
        # Starting a process and building its envs (imports included) may take longer than a step.
        self._wait_for([w], None if self.timeout is None else max(self.timeout, _START_TIMEOUT))
        conn = self._conns[w]
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            raise self._dead(w) from None
        if message[:1] == _ERROR:
            self._raise_worker_error(w, message[1:])
        return pickle.loads(message)

    def _collect(self) -> None:
        for w in self._wait_for(sorted(self._busy), self.timeout):
            message = self._read(w)
            if message[:1] == _PAYLOAD:
                infos, stats = pickle.loads(message[1:])
                self._worker_infos[w] = infos
                self._log.add(stats)
            elif message[:1] != _OK:
                raise self._fail(f"{self.backend} worker {w} sent an unexpected reply {message[:1]!r}")
            self._busy.discard(w)
            self._ready.append(w)

    def _send_command(self, workers: Sequence[int], message: bytes) -> None:
        for w in workers:
            try:
                self._conns[w].send_bytes(message)
            except (OSError, ValueError):
                raise self._dead(w) from None

    def _launch_step(self, workers: Sequence[int]) -> None:
        self._send_command(workers, _STEP)

    def _launch_reset(self, seed: int | None) -> None:
        workers = range(self.num_workers)
        self._busy.update(workers)
        if seed is None:
            self._send_command(workers, _RESET)
            return
        for w in workers:
            self._send_command([w], _RESET + struct.pack("<q", seed + w * self.envs_per_worker))

    def render(self) -> str:
        self._check_usable()
        while 0 in self._busy:
            self._collect()
        self._send_command([0], _RENDER)
        self._wait_for([0], self.timeout)
        message = self._read(0)
        return message[1:].decode()

    def _release_views(self) -> None:
        for name in ("observations", "final_observations", "rewards", "terminals", "truncations", "masks",
                     "_actions"):
            if hasattr(self, name):
                delattr(self, name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release_views()
        self._finalizer()


def make(
    creator: Callable[..., Any] | str,
    backend: str = "serial",
    num_envs: int = 1,
    num_workers: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    *,
    context: str = "spawn",
    timeout: float | None = 600.0,
) -> SerialVecEnv | MultiprocessingVecEnv:
    """Split `num_envs` over `num_workers` chunks built by `creator` and run them with `backend`.

    `creator(num_envs=..., seed=..., **env_kwargs)` must return a Shoal vector env; a string is
    taken as a name for `shoal.make`. For "multiprocessing" the creator must be picklable (a
    module-level function or a functools.partial of one), `context` picks "spawn" or
    "forkserver", and `timeout` bounds every wait for a worker (None: wait as long as the
    workers live).
    """
    if backend not in BACKENDS:
        raise ValueError(f"expected backend in {BACKENDS}, got {backend!r}")
    if isinstance(creator, str):
        creator = _NamedEnv(creator)
    elif not callable(creator):
        raise TypeError(f"expected a callable creator or an env name, got {creator!r}")
    num_envs, num_workers, batch_size = _check_layout(num_envs, num_workers, batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"expected seed to be an int, got {seed!r}")
    if env_kwargs is None:
        env_kwargs = {}
    elif not isinstance(env_kwargs, dict):
        raise TypeError(f"expected env_kwargs to be a dict or None, got {type(env_kwargs).__name__}")
    if backend == "serial":
        return SerialVecEnv(creator, num_envs, num_workers, batch_size, int(seed), env_kwargs)
    return MultiprocessingVecEnv(
        creator, num_envs, num_workers, batch_size, int(seed), env_kwargs, context=context, timeout=timeout
    )


__all__ = ["BACKENDS", "MultiprocessingVecEnv", "SerialVecEnv", "make"]
