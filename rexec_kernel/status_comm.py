"""The ``rexec.status`` comm: the worker's state to JupyterLab, and its actions back.

Both notebook sides use it: the "Rexec (remote)" kernel registers the comm target at start
(JupyterLab opens the comm when it connects), and ``%load_ext rexec_magics`` registers it and
also opens a comm itself, since the extension is loaded long after Lab connected.

Kernel to Lab, on every change: ``{"type": "status", ...}`` (``StatusTracker``); to answer an
action: ``{"type": "output", "request", "text"}`` (streamed pip output) and
``{"type": "done", "request", "ok", "message", "text"?}``.
Lab to kernel: ``{"action": "restart" | "log" | "environment" | "refresh", "request", ...}``.

A poller thread checks the session once a second (local state only, no network) and, while a
request runs or when Lab asks, samples the worker's CPU and memory with a small remote call;
an idle worker is never polled, so the status bar does not keep it from being culled.
Actions run on their own threads: a restart or an install never blocks the kernel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rexec.client.session import Session
from rexec.client.spawner import SpawnerClient
from rexec.errors import RexecError
from rexec_kernel.status import StatusTracker, sample_worker

log = logging.getLogger(__name__)

TARGET = "rexec.status"
POLL_INTERVAL = 1.0
SAMPLE_INTERVAL = 3.0
SAMPLE_TIMEOUT = 10.0
RESTART_TIMEOUT = 180.0
LOG_TAIL_DEFAULT = 500
LOG_TAIL_MAX = 10_000


@dataclass
class SessionState:
    """Where the notebook side's session is: the session if there is one, else why not."""

    session: Session | None
    connecting: bool = False
    error: str | None = None


SessionSource = Callable[[], SessionState]


class StatusChannel:
    """Owns the open ``rexec.status`` comms of one kernel process and feeds them."""

    def __init__(
        self,
        kernel: Any,
        comm_manager: Any,
        tracker: StatusTracker,
        sessions: SessionSource,
        *,
        poll_interval: float = POLL_INTERVAL,
        sample_interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.tracker = tracker
        self._kernel = kernel
        self._manager = comm_manager
        self._sessions = sessions
        self._poll_interval = poll_interval
        self._sample_interval = sample_interval
        self._comms: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._sample_now = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample = 0.0

    # -- comms ---------------------------------------------------------------------------

    def register(self) -> None:
        """Accept comms Lab opens to the ``rexec.status`` target."""
        self._manager.register_target(TARGET, self._on_open)

    def open_from_kernel(self) -> None:
        """Open a comm to Lab from this side (for the magics, loaded after Lab connected)."""
        from ipykernel.comm import Comm

        comm = Comm(target_name=TARGET, data=self._current())
        self._adopt(comm)

    def _on_open(self, comm: Any, msg: dict[str, Any]) -> None:
        self._adopt(comm)
        self.publish(force=True)

    def _adopt(self, comm: Any) -> None:
        comm.on_msg(self._on_msg)
        comm.on_close(lambda msg, comm_id=comm.comm_id: self._forget(comm_id))
        with self._lock:
            self._comms[comm.comm_id] = comm
        self._sample_now.set()
        self._start_poller()

    def _forget(self, comm_id: str) -> None:
        with self._lock:
            self._comms.pop(comm_id, None)

    def _send(self, data: dict[str, Any]) -> None:
        with self._lock:
            comms = list(self._comms.values())
        session, iopub = self._kernel.session, self._kernel.iopub_socket
        for comm in comms:
            try:
                # Not ``comm.send``: that would file the update under the cell running now,
                # and a status update is no cell's output. Lab routes comm messages by id.
                content = {"comm_id": comm.comm_id, "data": data}
                session.send(iopub, "comm_msg", content, parent=None, ident=comm.topic)
            except Exception:  # a closed comm or a kernel shutting down
                log.debug("could not send on comm %s", getattr(comm, "comm_id", "?"))

    def _current(self) -> dict[str, Any]:
        state = self._sessions()
        return self.tracker.observe(state.session, connecting=state.connecting, error=state.error)

    def publish(self, force: bool = False) -> None:
        """Send the status if it changed since the last one sent (or always, with ``force``)."""
        message = self._current()
        if self.tracker.changed(message) or force:
            self._send(message)

    def poke(self) -> None:
        """Something happened (a cell started or ended): publish soon."""
        self._wake.set()

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Marks a request: busy while it runs, with CPU/memory sampled meanwhile."""
        self.tracker.begin()
        self._sample_now.set()
        self.poke()
        try:
            yield
        finally:
            self.tracker.end()
            self._sample_now.set()
            self.poke()

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()

    # -- the poller ----------------------------------------------------------------------

    def _start_poller(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="rexec-status", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import time

        while not self._stopped.is_set():
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            try:
                due = time.monotonic() - self._last_sample >= self._sample_interval
                if self._sample_now.is_set() or (self.tracker.busy and due):
                    self._sample_now.clear()
                    self._sample()
                self.publish()
            except Exception:
                log.exception("the Rexec status poller failed; retrying")

    def _sample(self) -> None:
        import time

        session = self._sessions().session
        if session is None or not session.connected or session.worker_info is None:
            return
        self._last_sample = time.monotonic()
        try:
            sample = session.call(sample_worker, timeout=SAMPLE_TIMEOUT, output=_Discard())
        except RexecError as exc:
            log.debug("no resource sample from the worker: %s", exc)
            return
        if isinstance(sample, dict):
            self.tracker.note_sample(sample)

    # -- actions -------------------------------------------------------------------------

    def _on_msg(self, msg: dict[str, Any]) -> None:
        data = msg.get("content", {}).get("data") or {}
        action = data.get("action")
        request = str(data.get("request", ""))
        handlers: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "restart": self._restart,
            "log": self._log,
            "environment": self._environment,
            "refresh": self._refresh,
        }
        handler = handlers.get(str(action))
        if handler is None:
            self._send(_done(request, False, f"unknown action {action!r}"))
            return

        def run() -> None:
            try:
                result = handler(data, request)
            except RexecError as exc:
                result = _done(request, False, str(exc))
            except Exception as exc:
                log.exception("Rexec status action %r failed", action)
                result = _done(request, False, f"{type(exc).__name__}: {exc}")
            self._send(result)
            self.poke()

        threading.Thread(target=run, name=f"rexec-status-{action}", daemon=True).start()

    def _session(self) -> Session:
        state = self._sessions()
        if state.session is None:
            raise RexecError(state.error or "not connected to a Rexec stack yet; run a cell first")
        return state.session

    def _spawner(self, session: Session) -> SpawnerClient:
        url = session.profile.spawner_url
        if not url:
            raise RexecError("this needs the spawner's address (REXEC_SPAWNER_URL or `rexec up`)")
        return SpawnerClient(url, session.profile.require_token())

    def _refresh(self, data: dict[str, Any], request: str) -> dict[str, Any]:
        self._sample()
        self.publish(force=True)
        return _done(request, True, "refreshed")

    def _restart(self, data: dict[str, Any], request: str) -> dict[str, Any]:
        session = self._session()
        spawner = self._spawner(session)
        name = session.profile.worker
        try:
            self.tracker.note_progress("stopping the worker")
            self.poke()
            spawner.delete_worker(name)
            status = spawner.ensure_worker(name, RESTART_TIMEOUT, self._progress)
        finally:
            spawner.close()
        pid = (status.get("info") or {}).get("pid")
        where = f" (pid {pid})" if pid else ""
        return _done(request, True, f"a new worker{where} is ready; its namespace is empty")

    def _progress(self, message: str) -> None:
        self.tracker.note_progress(message)
        self.poke()

    def _log(self, data: dict[str, Any], request: str) -> dict[str, Any]:
        session = self._session()
        try:
            tail = min(max(int(data.get("tail") or LOG_TAIL_DEFAULT), 1), LOG_TAIL_MAX)
        except (TypeError, ValueError):
            tail = LOG_TAIL_DEFAULT
        spawner = self._spawner(session)
        try:
            text = spawner.worker_log(session.profile.worker, tail)
        finally:
            spawner.close()
        if text is None:
            return _done(request, False, f"no log for the worker {session.profile.worker!r} yet")
        return {**_done(request, True, f"last {tail} lines"), "text": text}

    def _environment(self, data: dict[str, Any], request: str) -> dict[str, Any]:
        from rexec.client.environment import apply_requirements

        text = str(data.get("requirements") or "")
        session = self._session()
        output = _CommOutput(lambda chunk: self._send(_output(request, chunk)))
        with self.activity():
            result = apply_requirements(session, text, output=output)
        return _done(request, True, _describe_environment(result))


class _Discard:
    """An output handler for the status sampler's calls, which print nothing."""

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        pass


class _CommOutput:
    """An output handler forwarding the text of streams (pip's output) to Lab."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            self._send(str(content.get("text", "")))
        elif msg_type == "error":
            self._send("\n".join(str(line) for line in content.get("traceback") or []) + "\n")


def _describe_environment(result: Any) -> str:
    """One line for the panel, from ``apply_requirements``' result."""
    if not isinstance(result, dict):
        return "environment applied"
    parts = [f"environment {result.get('env_id') or 'applied'}"]
    if result.get("status"):
        parts.append(str(result["status"]))
    requirements = result.get("requirements") or result.get("installed")
    if requirements:
        parts.append(", ".join(str(item) for item in requirements))
    if result.get("restarted"):
        parts.append("the worker restarted: its variables are gone")
    return "; ".join(parts)


def _done(request: str, ok: bool, message: str) -> dict[str, Any]:
    return {"type": "done", "request": request, "ok": ok, "message": message}


def _output(request: str, text: str) -> dict[str, Any]:
    return {"type": "output", "request": request, "text": text}


def attach_comm_manager(kernel: Any) -> Any:
    """The kernel's comm manager, created and wired to its shell handlers if it has none
    (the Rexec kernel is a plain ipykernel ``Kernel``, which has no comms of its own)."""
    manager = getattr(kernel, "comm_manager", None)
    if manager is not None:
        return manager
    import comm

    # Importing it makes ``comm.get_comm_manager()`` return ipykernel's one per-process manager,
    # the one every ``Comm`` registers with and unregisters from.
    import ipykernel.ipkernel  # noqa: F401

    manager = comm.get_comm_manager()
    kernel.comm_manager = manager
    for msg_type in ("comm_open", "comm_msg", "comm_close"):
        kernel.shell_handlers[msg_type] = getattr(manager, msg_type)
    return manager


def start_kernel_status(kernel: Any, link: Any) -> StatusChannel:
    """The status channel of the "Rexec (remote)" kernel, fed by its ``WorkerLink``."""
    import os

    def sessions() -> SessionState:
        session, connecting, error = link.snapshot()
        return SessionState(session, connecting, str(error) if error is not None else None)

    tracker = StatusTracker(os.environ.get("REXEC_WORKER") or "default", source="kernel")
    channel = StatusChannel(kernel, attach_comm_manager(kernel), tracker, sessions)

    def on_progress(message: str) -> None:
        tracker.note_progress(message)
        channel.poke()

    link.listener = on_progress
    channel.register()
    return channel
