"""The local backend: each worker is a subprocess of the spawner, on this machine.

Per (user, worker name) there is a directory ``<data dir>/workers/<user dir>/<name>/`` with

* ``credential`` (0600) — the one-user credential the broker checks; the worker learns its path
  from ``REXEC_WORKER_CREDENTIAL_FILE``, never from its command line, which others can read;
* ``status.json`` — written by the worker: ``connecting``, ``registered``, ``stopping``, plus
  its pid and versions; the backend turns it into progress messages. User code in the worker can
  write anything there, so it is read through :mod:`.worker_status`, which keeps only fields of
  the expected type and size;
* ``worker.log`` (0600) — the worker's stdout and stderr (``worker.log.1`` is the previous run);
* ``environment.json`` — the environment set for this worker (``set_environment``), kept across
  restarts of the worker and of the spawner; every worker started afterwards gets its variables.

Environments themselves live in ``<data dir>/envs/<env id>/`` (``REXEC_ENV_ROOT`` for workers),
shared by all workers, so a set of requirements is installed once.

Workers run in their own session (process group) so that stopping one also stops whatever it
started, and get ``--parent-pid`` so they exit if the spawner dies without stopping them.

All workers run as the spawner's OS user, so this backend cannot keep users apart: code in one
worker can read every other worker's credential. It therefore serves one user, its first, unless
the operator lists several in ``REXEC_LOCAL_USERS`` and so accepts that they are not isolated
(:mod:`.local_users`). The Kubernetes backend is the multi-tenant one.

Workers get only the environment variables Python, pip and user code need from the spawner's
environment (:func:`worker_environment`), never the spawner's own settings and secrets.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rexec.credentials import write_secret_file
from rexec.errors import SpawnError
from rexec.requirements import RequirementsPolicy
from rexec_spawner.activity import BrokerActivity
from rexec_spawner.backends.base import (
    ACTIVE_STATES,
    EnvironmentSpec,
    ProgressEvent,
    WorkerBackend,
    WorkerRecord,
    WorkerState,
    check_worker_limit,
    check_worker_name,
)
from rexec_spawner.backends.lifecycle import (
    DEFAULT_CREDENTIAL_TTL,
    Lease,
    broker_row,
    hung,
    issue_lease,
    renewal_due,
    revoke,
)
from rexec_spawner.backends.local_users import LocalUsers
from rexec_spawner.backends.worker_files import UnreadableFile, open_worker_file, read_worker_file
from rexec_spawner.backends.worker_status import ENV_ID, is_python_minor, read_status
from rexec_spawner.config import SpawnerSettings
from rexec_spawner.names import make_user_dir_name

log = logging.getLogger(__name__)

CREDENTIAL_ENV = "REXEC_WORKER_CREDENTIAL_FILE"
PUBLIC_KEY_ENV = "REXEC_BROKER_PUBLIC_KEY"
# What a worker keeps of the spawner's environment: what Python, pip (locale, temp dir, proxies,
# certificates, configuration) and GPU code need. Everything else stays out, above all the
# spawner's own settings and secrets (REXEC_HOME, REXEC_PROFILE, REXEC_TOKEN_FILE,
# REXEC_SIGNING_KEY_FILE, AUTH_API_URL...); the backend sets the worker's REXEC_* itself.
PASSED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "VIRTUAL_ENV",
        # A Python built with its shared library outside the system paths needs it to start.
        "LD_LIBRARY_PATH",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "CUDA_VISIBLE_DEVICES",
        "REXEC_QUIET",
    }
)
PASSED_ENV_PREFIXES = ("LC_", "PYTHON", "PIP_", "SSL_CERT_")
PASSED_ENV_SUFFIXES = ("_proxy", "_PROXY")
MAX_PROGRESS_EVENTS = 100
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8192
# What the log API reads at most for one answer (10,000 lines of up to ~800 bytes).
MAX_LOG_READ_BYTES = 8 * 1024 * 1024
ENV_ROOT_ENV = "REXEC_ENV_ROOT"
ENVIRONMENT_FILE = "environment.json"
# Well above what the spawner writes (at most 64 KiB of requirements, escaped as JSON).
MAX_ENVIRONMENT_BYTES = 512 * 1024
PYTHON_PROBE_TIMEOUT = 10.0
HEALTH_CHECK_INTERVAL = 2.0  # seconds between hung checks of a registered worker
REVOKE_ON_CLOSE_WAIT = 3.0  # seconds a closing backend waits for revocations on their way


@dataclass
class _LocalWorker:
    """Mutable state of one worker; only the event loop thread touches it."""

    user: str
    name: str
    directory: Path
    instance: str = field(default_factory=lambda: secrets.token_hex(6))
    created_at: float = field(default_factory=time.time)
    state: WorkerState = "starting"
    progress: deque[ProgressEvent] = field(
        default_factory=lambda: deque(maxlen=MAX_PROGRESS_EVENTS)
    )
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    process: subprocess.Popen[bytes] | None = None
    monitor: asyncio.Task[None] | None = None
    registered_once: bool = False
    exit_code: int | None = None
    # Set while the backend itself stops the process, which then explains the outcome.
    stopping: bool = False
    reported_state: str | None = None
    status_signature: tuple[int, int, int] | None = None
    # Kinds of status file problems already logged: each is logged once per worker.
    status_problems: set[str] = field(default_factory=set)
    lease: Lease | None = None
    next_health_check: float = 0.0

    @property
    def credential_path(self) -> Path:
        return self.directory / "credential"

    @property
    def status_path(self) -> Path:
        return self.directory / "status.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "worker.log"

    def note(self, message: str) -> None:
        self.progress.append(ProgressEvent(time.time(), message))

    def fail(self, error: str) -> None:
        self.state, self.error = "failed", error
        self.note(error)

    def snapshot(self) -> WorkerRecord:
        return WorkerRecord(
            user=self.user,
            name=self.name,
            state=self.state,
            instance=self.instance,
            created_at=self.created_at,
            progress=tuple(self.progress),
            info=dict(self.info),
            error=self.error,
        )


class LocalBackend(WorkerBackend):
    """Workers as subprocesses running ``worker_command``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        signing_key: bytes,
        broker_backend_url: str,
        broker_public_key: str | None,
        worker_command: Sequence[str],
        ready_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        poll_interval: float = 0.1,
        requirements_policy: RequirementsPolicy | None = None,
        max_workers_per_user: int = 0,
        local_users: Sequence[str] = (),
        credential_ttl: float = DEFAULT_CREDENTIAL_TTL,
        hung_after: float = 0.0,
        broker: BrokerActivity | None = None,
    ) -> None:
        self.users = LocalUsers(Path(data_dir), local_users)
        self.workers_dir = Path(data_dir) / "workers"
        self.env_root = Path(data_dir) / "envs"
        self.requirements_policy = requirements_policy or RequirementsPolicy()
        self._python: str | None = None
        self.broker_backend_url = broker_backend_url
        self.broker_public_key = broker_public_key
        self.worker_command = tuple(worker_command)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self._signing_key = signing_key
        self._workers: dict[tuple[str, str], _LocalWorker] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.max_workers_per_user = max_workers_per_user
        self._user_locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        self.credential_ttl = credential_ttl
        self.hung_after = hung_after
        # Revokes deleted workers' credentials and tells hung workers apart; optional.
        self.broker = broker
        self._revocations: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: SpawnerSettings, signing_key: bytes) -> LocalBackend:
        return cls(
            data_dir=settings.data_dir,
            signing_key=signing_key,
            broker_backend_url=settings.broker_backend_url,
            broker_public_key=settings.broker_public_key,
            worker_command=settings.worker_command,
            ready_timeout=settings.worker_ready_timeout,
            requirements_policy=settings.requirements_policy,
            max_workers_per_user=settings.max_workers_per_user,
            local_users=settings.local_users,
            credential_ttl=settings.worker_credential_ttl,
            hung_after=settings.worker_hung_after,
            broker=BrokerActivity(settings.activity_url, settings.broker_public_key, signing_key),
        )

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.workers_dir)!r}, workers={len(self._workers)})"

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _user_lock(self, user: str) -> asyncio.Lock:
        return self._user_locks.setdefault(user, asyncio.Lock())

    def _active_names(self, user: str) -> builtins.list[str]:
        mine = [worker for (owner, _), worker in self._workers.items() if owner == user]
        for worker in mine:
            self._refresh(worker)  # a worker that just died no longer counts
        return [worker.name for worker in mine if worker.state in ACTIVE_STATES]

    def worker_dir(self, user: str, name: str) -> Path:
        return self.workers_dir / make_user_dir_name(user) / name

    # --- the interface -----------------------------------------------------------------------

    async def ensure(self, user: str, name: str) -> WorkerRecord:
        check_worker_name(name)
        self.users.admit(user, claim=True)
        key = (user, name)
        # Counting the user's workers and starting one is a single step per user, so creations
        # of different names at the same time never overshoot the limit.
        async with self._user_lock(user), self._lock(key):
            if self._closed:
                raise SpawnError("the spawner is shutting down; try again once it is back")
            worker = self._workers.get(key)
            if worker is not None:
                # The monitor polls; a caller that just saw the worker die must not get it back.
                self._refresh(worker)
            if worker is not None and worker.state in ACTIVE_STATES:
                return worker.snapshot()
            check_worker_limit(self._active_names(user), name, self.max_workers_per_user)
            if worker is not None:
                await self._retire(worker)
            worker = _LocalWorker(user=user, name=name, directory=self.worker_dir(user, name))
            self._workers[key] = worker
            await self._start(worker)
            return worker.snapshot()

    async def get(self, user: str, name: str) -> WorkerRecord | None:
        self.users.admit(user)
        worker = self._workers.get((user, name))
        if worker is None:
            return None
        self._refresh(worker)
        return worker.snapshot()

    async def list(self, user: str) -> builtins.list[WorkerRecord]:
        self.users.admit(user)
        mine = [worker for (owner, _), worker in self._workers.items() if owner == user]
        for worker in mine:
            self._refresh(worker)
        return [worker.snapshot() for worker in sorted(mine, key=lambda w: w.name)]

    async def delete(self, user: str, name: str) -> bool:
        self.users.admit(user)
        return await self._delete(user, name)

    async def _delete(self, user: str, name: str) -> bool:
        key = (user, name)
        async with self._lock(key):
            worker = self._workers.pop(key, None)
            if worker is None:
                return False
            await self._retire(worker)
            log.info("deleted worker %r of user %r", name, user)
            return True

    async def close(self) -> None:
        self._closed = True
        keys = builtins.list(self._workers)
        await asyncio.gather(*(self._delete(user, name) for user, name in keys))
        if self._revocations:
            await asyncio.wait(builtins.list(self._revocations), timeout=REVOKE_ON_CLOSE_WAIT)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.close)

    # --- environments ------------------------------------------------------------------------

    def environment_path(self, user: str, name: str) -> Path:
        return self.worker_dir(user, name) / ENVIRONMENT_FILE

    async def set_environment(
        self, user: str, name: str, environment: EnvironmentSpec | None
    ) -> None:
        check_worker_name(name)
        self.users.admit(user)
        path = self.environment_path(user, name)
        if environment is None:
            path.unlink(missing_ok=True)
            return
        for directory in (self.workers_dir, path.parent.parent, path.parent):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"env_id": environment.env_id, "requirements": list(environment.requirements)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    async def get_environment(self, user: str, name: str) -> EnvironmentSpec | None:
        check_worker_name(name)
        self.users.admit(user)
        return _read_environment(self.environment_path(user, name))

    async def log(self, user: str, name: str, tail: int) -> str | None:
        check_worker_name(name)
        self.users.admit(user)
        path = self.worker_dir(user, name) / "worker.log"
        return await asyncio.to_thread(_read_tail, path, tail)

    async def worker_python(self, user: str, name: str) -> str | None:
        known = await super().worker_python(user, name)
        if known:
            return known
        if self._python is None:
            self._python = await asyncio.to_thread(self._probe_python)
        return self._python

    def _probe_python(self) -> str:
        """The Python minor version of the worker command's interpreter."""
        program = self.worker_command[0]
        if Path(program).name.startswith("python"):
            try:
                done = subprocess.run(
                    [program, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    capture_output=True,
                    text=True,
                    timeout=PYTHON_PROBE_TIMEOUT,
                    check=True,
                )
                version = done.stdout.strip()
                if is_python_minor(version):
                    return version
                log.warning("%s printed no Python version; assuming the spawner's", program)
            except (OSError, subprocess.SubprocessError):
                log.warning("cannot ask %s for its Python version; assuming the spawner's", program)
        return "{}.{}".format(*sys.version_info[:2])

    # --- starting ----------------------------------------------------------------------------

    def _command(self, worker: _LocalWorker) -> builtins.list[str]:
        return [
            *self.worker_command,
            "--broker",
            self.broker_backend_url,
            "--name",
            worker.name,
            "--status-file",
            str(worker.status_path),
            "--parent-pid",
            str(os.getpid()),
        ]

    def _environment(self, worker: _LocalWorker) -> dict[str, str]:
        env = worker_environment(os.environ)
        env[ENV_ROOT_ENV] = str(self.env_root)
        env.update(self.requirements_policy.worker_variables())
        spec = _read_environment(self.environment_path(worker.user, worker.name))
        if spec is not None:
            env.update(spec.worker_variables())
        env[CREDENTIAL_ENV] = str(worker.credential_path)
        if self.broker_public_key:
            env[PUBLIC_KEY_ENV] = self.broker_public_key
        # Unbuffered, so the log tail shown on a crash holds the worker's last words.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _prepare_directory(self, worker: _LocalWorker) -> None:
        for directory in (self.workers_dir, worker.directory.parent, worker.directory):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        worker.lease = issue_lease(
            self._signing_key, worker.user, worker.name, worker.instance, self.credential_ttl
        )
        write_secret_file(worker.credential_path, worker.lease.credential.encode())
        worker.status_path.unlink(missing_ok=True)
        if worker.log_path.exists():
            worker.log_path.replace(worker.log_path.with_name("worker.log.1"))

    def _spawn(self, worker: _LocalWorker, command: builtins.list[str]) -> subprocess.Popen[bytes]:
        self._prepare_directory(worker)
        log_fd = os.open(worker.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=self._environment(worker),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log_fd)

    async def _start(self, worker: _LocalWorker) -> None:
        command = self._command(worker)
        try:
            # Off the event loop: forking a large process and writing files can take a while.
            worker.process = await asyncio.to_thread(self._spawn, worker, command)
        except OSError as exc:
            worker.credential_path.unlink(missing_ok=True)
            worker.fail(
                f"cannot start the worker command {command[0]!r} ({exc.strerror or exc}); "
                "check REXEC_WORKER_COMMAND and that rexec is installed for that Python"
            )
            log.error("worker %r of user %r: %s", worker.name, worker.user, worker.error)
            return
        worker.note(f"starting worker process (pid {worker.process.pid})")
        log.info(
            "started worker %r of user %r (pid %d)", worker.name, worker.user, worker.process.pid
        )
        worker.monitor = asyncio.create_task(
            self._monitor(worker), name=f"rexec-worker-monitor-{worker.name}"
        )

    # --- watching ----------------------------------------------------------------------------

    async def _monitor(self, worker: _LocalWorker) -> None:
        """Follow the status file and the process until the process ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        try:
            while True:
                self._refresh(worker)
                if worker.exit_code is not None:
                    return
                if worker.reported_state == "building":
                    deadline = loop.time() + self.ready_timeout  # the build has its own limit
                if not worker.registered_once and loop.time() > deadline:
                    await self._give_up(worker)
                    return
                if renewal_due(worker.lease):
                    await asyncio.to_thread(self._renew, worker)
                if worker.registered_once and loop.time() >= worker.next_health_check:
                    worker.next_health_check = loop.time() + HEALTH_CHECK_INTERVAL
                    if await self._hung(worker):
                        await self._replace_hung(worker)
                        return
                await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not leave a worker reported as healthy forever.
            log.exception("monitor of worker %r of user %r failed", worker.name, worker.user)
            worker.fail("the spawner lost track of this worker; delete it and create it again")

    def _renew(self, worker: _LocalWorker) -> None:
        """Give the running worker a fresh credential (it re-reads the file and registers
        again); the file is replaced whole, so the worker never reads half of one."""
        worker.lease = issue_lease(
            self._signing_key, worker.user, worker.name, worker.instance, self.credential_ttl
        )
        fresh = worker.credential_path.with_name("credential.new")
        write_secret_file(fresh, worker.lease.credential.encode())
        os.replace(fresh, worker.credential_path)

    async def _hung(self, worker: _LocalWorker) -> bool:
        """Both signs of life gone: the status file the worker rewrites every few seconds is
        stale, and the broker no longer has it or has not heard from it (see ``lifecycle``)."""
        if self.hung_after <= 0 or worker.state != "ready" or worker.stopping:
            return False
        try:
            quiet = time.time() - worker.status_path.lstat().st_mtime
        except OSError:
            quiet = float("inf")
        if quiet < self.hung_after:
            return False
        known, row = await broker_row(self.broker, worker.user, worker.name, worker.instance)
        if self.broker is not None and not known:
            return False  # the broker cannot be asked: not enough to stop a worker
        return not known or hung(row, True, self.hung_after)

    async def _replace_hung(self, worker: _LocalWorker) -> None:
        reason = (
            f"the worker stopped responding (nothing from it for {self.hung_after:g} s, and "
            "its broker connection is gone or silent); it was stopped and the next call starts "
            "a new one (its variables are lost)"
        )
        log.warning("worker %r of user %r: %s", worker.name, worker.user, reason)
        worker.stopping = True
        await self._stop_process(worker)
        await self._revoke(worker)
        worker.credential_path.unlink(missing_ok=True)
        worker.fail(reason)

    async def _revoke(self, worker: _LocalWorker) -> None:
        """Revoke the worker's credential at the broker, in the background: a delete does not
        wait for the broker (``close`` waits for what is still on its way, briefly)."""
        if worker.lease is None or self.broker is None:
            return
        task = asyncio.create_task(
            revoke(self.broker, worker.user, worker.name, worker.instance, worker.lease.expires_at)
        )
        self._revocations.add(task)
        task.add_done_callback(self._revocations.discard)

    def _refresh(self, worker: _LocalWorker) -> None:
        """Bring the record up to date with the status file and the process."""
        if worker.process is None or worker.exit_code is not None or worker.stopping:
            return
        code = worker.process.poll()
        self._read_status(worker)
        if code is not None:
            self._finished(worker, code)

    def _read_status(self, worker: _LocalWorker) -> None:
        try:
            stat = worker.status_path.lstat()
        except OSError:
            return  # not written yet
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == worker.status_signature:
            return
        report = read_status(worker.status_path)
        if report is None:
            return  # removed since: the next poll looks again
        worker.status_signature = signature
        for kind, problem in report.problems.items():
            if kind not in worker.status_problems:
                worker.status_problems.add(kind)
                log.warning(
                    "worker %r of user %r: ignoring %s in its status file %s",
                    worker.name,
                    worker.user,
                    problem,
                    worker.status_path,
                )
        if not report.readable:
            return
        worker.info = report.info
        reported = report.state
        if reported == worker.reported_state:
            return
        previous = worker.reported_state
        worker.reported_state = reported
        if reported == "connecting" and previous == "restarting":
            worker.note("worker restarted in its new environment; connecting to the broker")
        elif reported == "connecting":
            if worker.registered_once:
                worker.state = "starting"
                worker.note("worker lost the broker; reconnecting")
            else:
                worker.note(
                    f"worker process running; connecting to the broker at {self.broker_backend_url}"
                )
        elif reported == "registered":
            worker.state, worker.registered_once = "ready", True
            worker.note("worker connected to the broker")
        elif reported == "restarting":
            worker.state = "starting"
            worker.note("worker restarting into another environment (its variables are gone)")
        elif reported == "building":
            worker.note(f"building environment {report.info.get('env_id', '?')} before connecting")
        elif reported == "stopping":
            worker.note("worker is stopping")

    def _finished(self, worker: _LocalWorker, code: int) -> None:
        assert worker.process is not None
        worker.exit_code = code
        _kill_leftovers(worker.process)
        worker.credential_path.unlink(missing_ok=True)
        if worker.state == "failed":
            return  # already explained (for example by the ready timeout)
        if code == 0:
            worker.state = "stopped"
            worker.note("worker process exited")
            return
        if code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        worker.fail(f"worker process {how}; {self._log_tail(worker)}")
        log.warning("worker %r of user %r %s", worker.name, worker.user, how)

    async def _give_up(self, worker: _LocalWorker) -> None:
        reason = (
            f"worker did not connect to the broker at {self.broker_backend_url} within "
            f"{self.ready_timeout:g} s; check that the broker is running and reachable"
        )
        worker.note(f"no broker connection after {self.ready_timeout:g} s; stopping the worker")
        log.warning("worker %r of user %r: %s", worker.name, worker.user, reason)
        # Stopped before it is reported failed, so "failed" always means "nothing left running".
        worker.stopping = True
        await self._stop_process(worker)
        worker.credential_path.unlink(missing_ok=True)
        worker.fail(f"{reason}; {self._log_tail(worker)}")

    def _log_tail(self, worker: _LocalWorker) -> str:
        try:
            with os.fdopen(open_worker_file(worker.log_path), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
                data = handle.read(LOG_TAIL_BYTES)
        except (OSError, UnreadableFile):
            return f"no log at {worker.log_path}"
        lines = data.decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
        if not lines:
            return f"its log {worker.log_path} is empty"
        return f"last lines of {worker.log_path}:\n" + "\n".join(lines)

    # --- stopping ----------------------------------------------------------------------------

    async def _retire(self, worker: _LocalWorker) -> None:
        """Stop watching and stop the process; remove what only a running worker needs."""
        worker.stopping = True
        if worker.monitor is not None:
            worker.monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.monitor
        await self._stop_process(worker)
        await self._revoke(worker)
        worker.credential_path.unlink(missing_ok=True)
        worker.status_path.unlink(missing_ok=True)

    async def _stop_process(self, worker: _LocalWorker) -> None:
        """SIGTERM the worker's process group, SIGKILL it after ``stop_timeout`` s."""
        process = worker.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        if not await _wait_exit(process, self.stop_timeout):
            log.warning("worker %r ignored SIGTERM; killing it", worker.name)
            _signal_group(process.pid, signal.SIGKILL)
            await _wait_exit(process, self.stop_timeout)
        _kill_leftovers(process)


def worker_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``source`` a worker keeps (see ``PASSED_ENV``)."""
    return {
        key: value
        for key, value in source.items()
        if key in PASSED_ENV
        or key.startswith(PASSED_ENV_PREFIXES)
        or key.endswith(PASSED_ENV_SUFFIXES)
    }


def _read_environment(path: Path) -> EnvironmentSpec | None:
    # The spawner writes this file, but it lies in the worker's directory, where the worker can
    # rewrite it: it is read as bounded, untrusted input too.
    try:
        data = json.loads(read_worker_file(path, MAX_ENVIRONMENT_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnreadableFile, ValueError, RecursionError) as exc:
        log.warning("ignoring the unreadable environment file %s: %s", path, exc)
        return None
    env_id = data.get("env_id") if isinstance(data, dict) else None
    requirements = data.get("requirements") if isinstance(data, dict) else None
    if (
        not isinstance(env_id, str)
        or not ENV_ID.fullmatch(env_id)
        or not isinstance(requirements, list)
        or not all(isinstance(line, str) for line in requirements)
    ):
        log.warning("ignoring the environment file %s: it does not hold an environment", path)
        return None
    return EnvironmentSpec(env_id, tuple(requirements))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_leftovers(process: subprocess.Popen[bytes]) -> None:
    """Kill what the worker started and left behind in its session.

    Only call this right after seeing the worker exit: while members remain, the group id cannot
    be reused, so the signal reaches nobody else.
    """
    _signal_group(process.pid, signal.SIGKILL)


async def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _read_tail(path: Path, lines: int, chunk: int = 64 * 1024) -> str | None:
    """The last ``lines`` lines of ``path``, read backwards and at most ``MAX_LOG_READ_BYTES``
    of it, so a huge log, or one the worker wrote without line breaks, costs little."""
    try:
        fd = open_worker_file(path)
    except FileNotFoundError:
        return None
    except (OSError, UnreadableFile) as exc:
        raise SpawnError(f"cannot show the worker's log {path}: {exc}") from None
    pieces: list[bytes] = []
    newlines = 0
    with os.fdopen(fd, "rb") as handle:
        end = position = handle.seek(0, os.SEEK_END)
        while position > 0 and newlines <= lines and end - position < MAX_LOG_READ_BYTES:
            size = min(chunk, position, MAX_LOG_READ_BYTES - (end - position))
            position -= size
            handle.seek(position)
            piece = handle.read(size)
            pieces.append(piece)
            newlines += piece.count(b"\n")
    data = b"".join(reversed(pieces))
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
