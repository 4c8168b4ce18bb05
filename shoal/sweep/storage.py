"""Where sweeps live, and how trials of dead workers are found and re-queued.

Default storage is one Optuna journal file per sweep, ``sweeps/<NAME>.journal``: appends are
guarded by a lock file, so several local processes can share it. An RDB URL
(``postgresql://...``, ``sqlite:///...``) lets workers on many machines join one sweep.

A worker records who runs each trial (host, pid, process start time) and refreshes a heartbeat
while it runs. A RUNNING trial is stale when its process is gone (same host) or its heartbeat
is older than the grace period (any host); stale trials are marked FAIL (user attrs `error`,
`stale`) and their parameters enqueued again, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

SWEEP_DIR = "sweeps"
WORKER_ATTR = "shoal:worker"
HEARTBEAT_ATTR = "shoal:heartbeat"
HEARTBEAT_SECONDS = 15.0
STALE_AFTER_SECONDS = 300.0


def is_url(storage: str) -> bool:
    """Whether --storage names an RDB (``postgresql://...``) rather than a journal file."""
    return "://" in storage


def journal_path(name: str, sweep_dir: str | Path = SWEEP_DIR) -> Path:
    """Where the default journal file of sweep NAME lives."""
    return Path(sweep_dir) / f"{name}.journal"


def default_journal_path(name: str, sweep_dir: str | Path = SWEEP_DIR) -> Path:
    """journal_path for a new sweep, whose name must be a plain file name."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"sweep name must be a plain file name (no '/'), got {name!r}")
    return journal_path(name, sweep_dir)


def storage_url(name: str, storage: str | None, sweep_dir: str | Path = SWEEP_DIR) -> str:
    """The storage a sweep uses, as given to --storage (a journal path or an RDB URL)."""
    return storage if storage else str(default_journal_path(name, sweep_dir))


# ---- opening a storage: errors a user can act on ----
# Seconds to wait for a database server before saying it cannot be reached.
CONNECT_TIMEOUT_SECONDS = 5


class StorageError(RuntimeError):
    """The sweep storage cannot be reached or opened; the message names it and the driver's reason."""


def open_storage(url: str) -> BaseStorage:
    """An RDB URL (contains '://') or a path to a journal file (created with its folder).

    Raises StorageError, in one line, when the database cannot be reached (within
    CONNECT_TIMEOUT_SECONDS), the URL is malformed, or the journal path cannot be used.
    """
    if is_url(url):
        return _open_rdb(url)
    path = Path(url)
    if path.is_dir():
        raise StorageError(f"storage {path} is a folder; give a journal file (e.g. {path / 'NAME.journal'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise StorageError(f"cannot open the storage {path}: {e.strerror or e}") from None


def _open_rdb(url: str) -> BaseStorage:
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(f"storage {url} is not a database URL: {e}") from None
    shown = parsed.render_as_string(hide_password=True)
    url = _with_installed_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith(("postgresql", "mysql")):
        # Workers on other machines may be slow to write; keep connections healthy. A server that
        # is not there must fail in seconds, not after the OS's TCP timeout (minutes).
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS}}
    try:
        return RDBStorage(url, engine_kwargs=kwargs) if kwargs else RDBStorage(url)
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.ArgumentError, ImportError) as e:
        raise StorageError(_unreachable(shown, parsed, e)) from None


def _unreachable(shown: str, parsed: Any, error: Exception) -> str:
    """'cannot reach the storage URL (host H, port P): the driver's first line'."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = reason[0].strip() if reason else type(error).__name__
    if parsed.host:
        port = parsed.port if parsed.port is not None else "default"
        return f"cannot reach the storage {shown} (host {parsed.host}, port {port}): {first}"
    return f"cannot open the storage {shown}: {first}"


def _with_installed_driver(url: str) -> str:
    """'postgresql://' means psycopg (v3) to recent SQLAlchemy; use psycopg2 when only it is installed."""
    if not url.startswith("postgresql://"):
        return url
    try:
        importlib.import_module("psycopg")
        return url
    except ImportError:
        pass
    try:
        importlib.import_module("psycopg2")
    except ImportError:
        raise ValueError(
            f"storage {url} needs a PostgreSQL driver: pip install 'psycopg[binary]' or psycopg2-binary"
        ) from None
    return "postgresql+psycopg2://" + url[len("postgresql://") :]


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (to tell a reused pid from the original)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22, counted after the parenthesized command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[19]


def worker_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start_time(pid)}


def process_alive(identity: dict[str, Any]) -> bool | None:
    """True/False for a process on this host; None when it runs elsewhere (can't tell)."""
    if identity.get("host") != socket.gethostname():
        return None
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = identity.get("start")
    if start is not None and os.path.exists(f"/proc/{pid}"):
        return _process_start_time(pid) == start
    return True


def is_stale(trial: FrozenTrial, now: float | None = None, stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """Whether a RUNNING trial's worker is dead."""
    if trial.state != TrialState.RUNNING:
        return False
    identity = trial.system_attrs.get(WORKER_ATTR)
    if isinstance(identity, dict):
        alive = process_alive(identity)
        if alive is not None:
            return not alive
    now = time.time() if now is None else now
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        # Never claimed by a shoal worker: judge by its start time.
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > stale_after
    return now - float(beat) > stale_after


def reap_stale_trials(study: optuna.Study, stale_after: float = STALE_AFTER_SECONDS) -> list[int]:
    """Mark trials of dead workers FAIL and enqueue their parameters again; returns their numbers."""
    storage = study._storage
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, stale_after=stale_after):
            continue
        identity = trial.system_attrs.get(WORKER_ATTR) or {}
        who = f"{identity.get('host', '?')}:{identity.get('pid', '?')}"
        try:
            storage.set_trial_user_attr(
                trial._trial_id, "error", f"worker {who} stopped while running this trial (re-queued)"
            )
            storage.set_trial_user_attr(trial._trial_id, "stale", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            # Another worker got there first (or the trial just finished).
            continue
        requeue(study, trial)
        reaped.append(trial.number)
    return reaped


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a trial's parameters again (WAITING), remembering where they came from."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})


class Heartbeat:
    """Refreshes a trial's heartbeat from a background thread while the trial runs."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float = HEARTBEAT_SECONDS):
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-sweep-heartbeat", daemon=True)

    def beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except (UpdateFinishedTrialError, RuntimeError):
                return
            except Exception:
                # A transient storage error must not kill the run; the next beat retries.
                continue

    def __enter__(self) -> Heartbeat:
        self.storage.set_trial_system_attr(self.trial_id, WORKER_ATTR, worker_identity())
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
