"""Vectorization backends: many copies of a vector env behind one vector env.

`make(creator, backend=..., num_envs=..., num_workers=...)` splits `num_envs` into
`num_workers` equal chunks and builds one vector env per chunk with
`creator(num_envs=chunk, seed=seed + w * chunk, **env_kwargs)` (a native env holding several
copies, or an emulated Gymnasium/PettingZoo env). The result follows the vector-env contract
(shoal.core.contract, docs/architecture.md section 1).

- "serial": the chunks live in this process and are stepped in turn; their results are copied
  into buffers allocated once.
- "multiprocessing": one worker process per chunk, started with "spawn" or "forkserver" (fork is
  unsafe once torch has started threads). Every buffer lives in one shared-memory block; the
  parent and a worker exchange one-byte commands over a pipe, and pickle only the rare infos and
  episode statistics, never arrays.

Every call steps all chunks. `step(actions)` is `send(actions)` then `recv()`; between the two
the workers of the multiprocessing backend step while the caller does other work.
"""

from __future__ import annotations

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

from shoal.core.checks import check_int, check_positive_int, check_seed
from shoal.core.contract import Batch, StepResult
from shoal.core.episodes import EpisodeLog
from shoal.emulation import check_actions

BACKENDS = ("serial", "multiprocessing")
CONTEXTS = ("spawn", "forkserver")

# Commands (parent -> worker) and replies (worker -> parent): the first byte of a message.
_STEP, _RESET, _RENDER, _CLOSE = b"S", b"R", b"D", b"C"
_OK, _PAYLOAD, _TEXT, _ERROR = b"K", b"P", b"T", b"E"
# The least time a worker gets to start and build its envs, whatever `timeout` says.
_START_TIMEOUT = 120.0
_BUFFERS = ("observations", "final_observations", "rewards", "terminals", "truncations", "masks", "actions")


class _NamedEnv:
    """A picklable creator for `make(name, ...)` (native or "gym:"/"pettingzoo:" names)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, num_envs: int, seed: int, **kwargs: Any) -> Any:
        from shoal.envs.registry import make

        return make(self.name, num_envs=num_envs, seed=seed, **kwargs)

    def __repr__(self) -> str:
        return f"shoal.make({self.name!r})"


def _check_layout(num_envs: Any, num_workers: Any) -> tuple[int, int]:
    num_envs = check_positive_int("num_envs", num_envs)
    num_workers = check_positive_int("num_workers", num_workers)
    if num_envs % num_workers:
        raise ValueError(
            f"num_envs ({num_envs}) must be a multiple of num_workers ({num_workers}) so that every worker "
            "gets the same number of envs"
        )
    return num_envs, num_workers


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
        # The image a native env's flat rows hold (obs="pixels"), so a policy picks its CNN.
        "structured_observation_space": getattr(env, "structured_observation_space", None),
    }


def _check_same(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' common description; ValueError naming the first worker that differs."""
    first = metas[0]
    for w, meta in enumerate(metas[1:], start=1):
        for key in ("agents_per_env", "observation_space", "action_space", "obs_dtype"):
            if meta[key] != first[key]:
                raise ValueError(f"worker {w}'s env has {key} {meta[key]}, but worker 0's has {first[key]}")
    return first


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


def _copy_step(env: Any, result: StepResult, chunk: dict[str, np.ndarray]) -> None:
    """Write a chunk env's step into the chunk's rows of the whole env's buffers."""
    obs, rewards, terminals, truncations = result[:4]
    chunk["observations"][:] = obs
    chunk["rewards"][:] = rewards
    chunk["terminals"][:] = terminals
    chunk["truncations"][:] = truncations
    if truncations.any():
        chunk["final_observations"][:] = env.final_observations
    masks = getattr(env, "masks", None)
    if masks is not None:
        chunk["masks"][:] = masks


def _copy_reset(env: Any, obs: np.ndarray, chunk: dict[str, np.ndarray]) -> None:
    """Write a chunk env's reset into the chunk's rows of the whole env's buffers."""
    chunk["observations"][:] = obs
    chunk["rewards"][:] = 0.0
    chunk["terminals"][:] = False
    chunk["truncations"][:] = False
    masks = getattr(env, "masks", None)
    if masks is not None:
        chunk["masks"][:] = masks


class _ChunkedVecEnv:
    """The contract over chunks that a backend steps all together.

    A backend supplies `_launch_step` / `_launch_reset` (start a command on every chunk) and
    `_wait` (block until the last one finished everywhere).
    """

    backend = ""

    def __init__(self, num_envs: int, num_workers: int, seed: int) -> None:
        self.num_envs = num_envs
        self.num_workers = num_workers
        self.envs_per_worker = num_envs // num_workers
        self.seed = seed
        self._worker_infos: list[list[dict]] = [[] for _ in range(num_workers)]
        self._log = EpisodeLog()
        self._reset_done = False
        self._sent = False  # a send() waits for its recv()
        self._reset_unread = False  # the reset observations wait for recv()
        self._closed = False
        self._broken: str | None = None

    def _setup(self, meta: dict[str, Any], buffers: dict[str, np.ndarray]) -> None:
        self.agents_per_env = meta["agents_per_env"]
        self.num_agents = self.num_envs * self.agents_per_env
        self.agents_per_worker = self.envs_per_worker * self.agents_per_env
        self.single_observation_space: spaces.Box = meta["observation_space"]
        self.single_action_space: spaces.Space = meta["action_space"]
        self.unflatten: Callable[[Any], Any] | None = meta["unflatten"]
        self.structured_observation_space: spaces.Space | None = meta["structured_observation_space"]
        buffers["masks"][:] = True
        self.observations = buffers["observations"]
        self.final_observations = buffers["final_observations"]
        self.rewards = buffers["rewards"]
        self.terminals = buffers["terminals"]
        self.truncations = buffers["truncations"]
        self.masks = buffers["masks"]
        self._actions = buffers["actions"]
        self.agent_ids = np.arange(self.num_agents, dtype=np.int64)

    def _chunk_seed(self, seed: int, w: int) -> int:
        """Worker w's seed: its envs continue the numbering of the ones before it."""
        return seed + w * self.envs_per_worker

    # ---- backend hooks ----

    def _launch_step(self) -> None:
        raise NotImplementedError

    def _launch_reset(self, seed: int | None) -> None:
        raise NotImplementedError

    def _wait(self) -> None:
        raise NotImplementedError

    def _gather_logs(self) -> None:
        """Serial envs are asked here; workers report with each step instead."""

    # ---- helpers ----

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {self.backend} vector env is closed")
        if self._broken is not None:
            raise RuntimeError(
                f"this {self.backend} vector env failed earlier and must be closed: {self._broken}"
            )

    def _check_reset(self, call: str) -> None:
        self._check_usable()
        if not self._reset_done:
            raise RuntimeError(f"call reset() before {call}()")

    def _take_infos(self) -> list[dict]:
        infos = [info for chunk in self._worker_infos for info in chunk]
        self._worker_infos = [[] for _ in range(self.num_workers)]
        return infos

    def _load_actions(self, actions: Any) -> None:
        checked = check_actions(actions, self.single_action_space, self.num_agents)
        self._actions[:] = checked.reshape(self._actions.shape)

    # ---- the contract ----

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        self._check_usable()
        seed = check_seed(seed)
        self._wait()  # a send() nobody received
        self._sent = False
        if seed is None and not self._reset_done:
            seed = self.seed
        self._worker_infos = [[] for _ in range(self.num_workers)]
        self._launch_reset(seed)
        self._wait()
        self._reset_done = True
        self._reset_unread = True
        return self.observations, self._take_infos()

    def step(self, actions: Any) -> StepResult:
        self._check_reset("step")
        if self._sent:
            raise RuntimeError("step() cannot run while a send() is in flight; call recv() first")
        self._load_actions(actions)
        self._launch_step()
        self._wait()
        self._reset_unread = False
        return self.observations, self.rewards, self.terminals, self.truncations, self._take_infos()

    def send(self, actions: Any) -> None:
        """Start a step of every env with `actions`; `recv()` returns its result."""
        self._check_reset("send")
        if self._sent:
            raise RuntimeError("send() called twice without recv(); call recv() to collect the last step")
        self._load_actions(actions)
        self._launch_step()
        self._sent = True
        self._reset_unread = False

    def recv(self) -> Batch:
        """The step started by the last `send()` (or, right after `reset()`, the reset observations)."""
        self._check_reset("recv")
        if self._sent:
            self._wait()
            self._sent = False
        elif self._reset_unread:
            self._reset_unread = False
        else:
            raise RuntimeError("recv() has no step to collect; call send(actions) first")
        return Batch(
            self.observations, self.rewards, self.terminals, self.truncations,
            self.final_observations, self._take_infos(), self.agent_ids, self.masks,
        )

    def log(self) -> dict[str, float | int]:
        self._check_usable()
        self._gather_logs()
        return self._log.pop()

    def __enter__(self) -> _ChunkedVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, num_workers={self.num_workers})"


# ---------------------------------------------------------------------------------------------
# Serial
# ---------------------------------------------------------------------------------------------


class SerialVecEnv(_ChunkedVecEnv):
    """Chunks built in this process and stepped one after the other."""

    backend = "serial"

    def __init__(
        self,
        creator: Callable[..., Any],
        num_envs: int,
        num_workers: int,
        seed: int,
        env_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(num_envs, num_workers, seed)
        self.envs: list[Any] = []
        try:
            metas = []
            for w in range(num_workers):
                env = creator(num_envs=self.envs_per_worker, seed=self._chunk_seed(seed, w), **env_kwargs)
                self.envs.append(env)
                metas.append(_describe(env, self.envs_per_worker))
            meta = _check_same(metas)
            specs = _buffer_specs(meta, num_envs * meta["agents_per_env"])
            buffers = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in specs.items()}
            self._setup(meta, buffers)
            rows = self.agents_per_worker
            self._chunks = [
                {name: buffers[name][w * rows : (w + 1) * rows] for name in _BUFFERS}
                for w in range(num_workers)
            ]
        except BaseException:
            self._close_envs()
            raise

    def _launch_step(self) -> None:
        for w, env in enumerate(self.envs):
            chunk = self._chunks[w]
            result = env.step(chunk["actions"])
            _copy_step(env, result, chunk)
            self._worker_infos[w] = list(result[4])

    def _launch_reset(self, seed: int | None) -> None:
        for w, env in enumerate(self.envs):
            obs, infos = env.reset(seed=None if seed is None else self._chunk_seed(seed, w))
            _copy_reset(env, obs, self._chunks[w])
            self._worker_infos[w] = list(infos)

    def _wait(self) -> None:
        """Serial chunks finish inside the launch."""

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


# ---------------------------------------------------------------------------------------------
# Multiprocessing: the worker side
# ---------------------------------------------------------------------------------------------


def _views(buf: memoryview, layout: dict[str, tuple[int, tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buf, offset=offset)
        for name, (offset, shape, dtype) in layout.items()
    }


def _worker_main(
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
    try:
        env = creator(num_envs=num_envs, seed=seed, **env_kwargs)
        conn.send(_describe(env, num_envs))
        setup = conn.recv_bytes()
        if setup == _CLOSE:  # the parent gave up before handing out the buffers
            return
        shm_name, layout, start, stop = pickle.loads(setup)
        shm = shared_memory.SharedMemory(name=shm_name)
        conn.send_bytes(_OK)
        _serve(env, {name: view[start:stop] for name, view in _views(shm.buf, layout).items()}, conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        # The parent is gone or interrupting us: nobody is left to report to.
        return
    except BaseException as exc:
        report = (type(exc).__name__, str(exc), traceback.format_exc())
        with contextlib.suppress(Exception):
            conn.send_bytes(_ERROR + pickle.dumps(report))
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
        if shm is not None:
            # BufferError: a view of the block is still alive; the mapping goes with the process.
            with contextlib.suppress(BufferError):
                shm.close()


def _serve(env: Any, chunk: dict[str, np.ndarray], conn: mp.connection.Connection) -> None:
    """Answer the parent's commands on this worker's rows of the shared buffers until told to close."""
    while True:
        message = conn.recv_bytes()
        command = message[:1]
        if command == _STEP:
            result = env.step(chunk["actions"])
            _copy_step(env, result, chunk)
            _reply(conn, list(result[4]), env.log())
        elif command == _RESET:
            seed = struct.unpack("<q", message[1:])[0] if len(message) > 1 else None
            obs, infos = env.reset(seed=seed)
            _copy_reset(env, obs, chunk)
            _reply(conn, list(infos), None)
        elif command == _RENDER:
            conn.send_bytes(_TEXT + str(env.render()).encode())
        elif command == _CLOSE:
            return
        else:
            raise RuntimeError(f"unknown command {command!r} from the parent")


def _reply(conn: mp.connection.Connection, infos: list[dict], stats: dict[str, Any] | None) -> None:
    """A bare OK, or the infos and episode statistics when there are any (pickled)."""
    if infos or stats:
        conn.send_bytes(_PAYLOAD + pickle.dumps((infos, stats), protocol=pickle.HIGHEST_PROTOCOL))
    else:
        conn.send_bytes(_OK)


# ---------------------------------------------------------------------------------------------
# Multiprocessing: the parent side
# ---------------------------------------------------------------------------------------------


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


class MultiprocessingVecEnv(_ChunkedVecEnv):
    """One worker process per chunk; buffers in shared memory; `send` returns while workers step."""

    backend = "multiprocessing"

    def __init__(
        self,
        creator: Callable[..., Any],
        num_envs: int,
        num_workers: int,
        seed: int,
        env_kwargs: dict[str, Any],
        context: str = "spawn",
        timeout: float | None = 600.0,
    ) -> None:
        super().__init__(num_envs, num_workers, seed)
        if context not in CONTEXTS:
            raise ValueError(
                f"expected context in {CONTEXTS} (fork is unsafe once torch has started threads), "
                f"got {context!r}"
            )
        if timeout is not None and not (isinstance(timeout, numbers.Real) and timeout > 0):
            raise ValueError(f"expected timeout > 0 seconds or None, got {timeout!r}")
        self.timeout = None if timeout is None else float(timeout)
        # patience: seconds close() waits for workers to exit by themselves (none after a timeout).
        self._resources: dict[str, Any] = {"procs": [], "conns": [], "shm": None, "patience": 5.0}
        self._procs: list[Any] = self._resources["procs"]
        self._conns: list[mp.connection.Connection] = self._resources["conns"]
        self._busy: set[int] = set()
        self._finalizer = weakref.finalize(self, _shutdown, self._resources)
        try:
            self._start_workers(mp.get_context(context), creator, env_kwargs)
            self._share_buffers(_check_same([self._handshake(w) for w in range(num_workers)]))
        except BaseException:
            self._release_views()
            self._finalizer()
            raise

    def _start_workers(self, ctx: Any, creator: Callable[..., Any], env_kwargs: dict[str, Any]) -> None:
        for w in range(self.num_workers):
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_worker_main,
                args=(creator, self.envs_per_worker, self._chunk_seed(self.seed, w), env_kwargs, child_conn),
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

    def _share_buffers(self, meta: dict[str, Any]) -> None:
        """Put every buffer in one shared-memory block and give each worker its rows of it."""
        layout: dict[str, tuple[int, tuple[int, ...], str]] = {}
        offset = 0
        for name, (shape, dtype) in _buffer_specs(meta, self.num_envs * meta["agents_per_env"]).items():
            layout[name] = (offset, shape, dtype.str)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            offset += (nbytes + 63) // 64 * 64  # keep every buffer cache-line aligned
        shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
        self._resources["shm"] = shm
        self._setup(meta, _views(shm.buf, layout))
        rows = self.agents_per_worker
        for w, conn in enumerate(self._conns):
            conn.send_bytes(pickle.dumps((shm.name, layout, w * rows, (w + 1) * rows)))
        self._busy.update(range(self.num_workers))
        self._wait()

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
        return pickle.loads(self._read(w))

    def _wait(self) -> None:
        while self._busy:
            for w in self._wait_for(sorted(self._busy), self.timeout):
                message = self._read(w)
                if message[:1] == _PAYLOAD:
                    infos, stats = pickle.loads(message[1:])
                    self._worker_infos[w] = infos
                    self._log.add(stats)
                elif message[:1] != _OK:
                    raise self._fail(f"{self.backend} worker {w} sent an unexpected reply {message[:1]!r}")
                self._busy.discard(w)

    def _send_command(self, workers: Sequence[int], message: bytes) -> None:
        for w in workers:
            try:
                self._conns[w].send_bytes(message)
            except (OSError, ValueError):
                raise self._dead(w) from None

    def _launch_step(self) -> None:
        workers = range(self.num_workers)
        self._busy.update(workers)
        self._send_command(workers, _STEP)

    def _launch_reset(self, seed: int | None) -> None:
        workers = range(self.num_workers)
        self._busy.update(workers)
        if seed is None:
            self._send_command(workers, _RESET)
            return
        for w in workers:
            self._send_command([w], _RESET + struct.pack("<q", self._chunk_seed(seed, w)))

    def render(self) -> str:
        self._check_usable()
        self._wait()
        self._send_command([0], _RENDER)
        self._wait_for([0], self.timeout)
        return self._read(0)[1:].decode()

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
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    *,
    context: str = "spawn",
    timeout: float | None = 600.0,
) -> SerialVecEnv | MultiprocessingVecEnv:
    """Split `num_envs` over `num_workers` chunks built by `creator` and run them with `backend`.

    `creator(num_envs=..., seed=..., **env_kwargs)` must return a Shoal vector env; a string is
    taken as an env name for `shoal.envs.registry.make`. For "multiprocessing" the creator must
    be picklable (a module-level function or a functools.partial of one), `context` picks
    "spawn" or "forkserver", and `timeout` bounds every wait for a worker (None: wait as long
    as the workers live).
    """
    if backend not in BACKENDS:
        raise ValueError(f"expected backend in {BACKENDS}, got {backend!r}")
    if isinstance(creator, str):
        creator = _NamedEnv(creator)
    elif not callable(creator):
        raise TypeError(f"expected a callable creator or an env name, got {creator!r}")
    num_envs, num_workers = _check_layout(num_envs, num_workers)
    seed = check_int("seed", seed)
    if env_kwargs is None:
        env_kwargs = {}
    elif not isinstance(env_kwargs, dict):
        raise TypeError(f"expected env_kwargs to be a dict or None, got {type(env_kwargs).__name__}")
    if backend == "serial":
        return SerialVecEnv(creator, num_envs, num_workers, seed, env_kwargs)
    return MultiprocessingVecEnv(
        creator, num_envs, num_workers, seed, env_kwargs, context=context, timeout=timeout
    )


__all__ = ["BACKENDS", "MultiprocessingVecEnv", "SerialVecEnv", "make"]
