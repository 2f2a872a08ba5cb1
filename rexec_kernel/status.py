"""The remote worker's state as JupyterLab's status bar shows it: pure bookkeeping.

``StatusTracker`` turns what the notebook side knows — the session (connected? which worker
registered?), requests in flight, spawn progress, the last CPU/memory sample — into one of
``starting``, ``ready``, ``busy``, ``dead`` or ``not connected`` and a JSON ``status`` message
(the shape is in docs/jupyterlab.md). ``rexec_kernel.status_comm`` sends it over the
``rexec.status`` comm; nothing here does I/O, so it is tested without a kernel.

    >>> tracker = StatusTracker("default", source="kernel")
    >>> tracker.note_progress("starting worker process (pid 42)")
    >>> tracker.observe(None, connecting=True)["worker_state"]
    'starting'
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Literal, Protocol

State = Literal["starting", "ready", "busy", "dead", "not connected"]
MAX_PROGRESS = 20


class SessionView(Protocol):
    """What the tracker reads from a ``rexec.client.session.Session``."""

    @property
    def connected(self) -> bool: ...

    worker_info: dict[str, Any] | None


def cpu_percent(previous: dict[str, Any] | None, current: dict[str, Any]) -> float | None:
    """CPU use between two worker samples, in percent of one core (200 = two cores busy).

    >>> cpu_percent({"cpu_seconds": 1.0, "wall": 10.0}, {"cpu_seconds": 1.5, "wall": 11.0})
    50.0
    >>> cpu_percent(None, {"cpu_seconds": 1.0, "wall": 10.0}) is None
    True
    """
    if not previous or previous.get("pid") != current.get("pid"):
        return None
    try:
        used = float(current["cpu_seconds"]) - float(previous["cpu_seconds"])
        elapsed = float(current["wall"]) - float(previous["wall"])
    except (KeyError, TypeError, ValueError):
        return None
    if elapsed <= 0 or used < 0:
        return None
    return round(100.0 * used / elapsed, 1)


def sample_worker() -> dict[str, Any]:
    """Runs on the worker: its process's CPU time, resident memory and the machine's memory."""
    import os
    import resource
    import time

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as statm:
            rss: int | None = int(statm.read().split()[1]) * page
    except (OSError, ValueError, IndexError):
        rss = usage.ru_maxrss * 1024  # the peak, where /proc is missing
    try:
        total: int | None = os.sysconf("SC_PHYS_PAGES") * page
    except (OSError, ValueError):
        total = None
    return {
        "pid": os.getpid(),
        "wall": time.monotonic(),
        "cpu_seconds": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
        "rss_bytes": rss,
        "mem_total_bytes": total,
    }


class StatusTracker:
    """Derives the worker state from the session and from what the notebook side is doing.

    Thread-safe: cells, the status poller and actions update it from different threads.
    """

    def __init__(self, worker: str, *, source: Literal["kernel", "magics"]) -> None:
        self.worker = worker
        self.source = source
        self._lock = threading.Lock()
        self._busy = 0
        self._spawning = False
        self._progress: deque[str] = deque(maxlen=MAX_PROGRESS)
        self._detail = ""
        self._last_pid: Any = None
        self._sample: dict[str, Any] | None = None
        self._cpu: float | None = None
        self._last: dict[str, Any] | None = None

    # -- events ------------------------------------------------------------------------

    def note_progress(self, message: str) -> None:
        """A spawn-progress line: the worker is being (re)started until it registers."""
        if not message:
            return
        with self._lock:
            if not self._spawning:
                self._progress.clear()
            self._spawning = True
            self._progress.append(message)

    def begin(self) -> None:
        """A request (cell, install) started."""
        with self._lock:
            self._busy += 1
            self._detail = ""

    def end(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy > 0

    def note_sample(self, sample: dict[str, Any]) -> None:
        """A ``sample_worker()`` result; CPU is computed against the previous sample."""
        with self._lock:
            cpu = cpu_percent(self._sample, sample)
            if (
                cpu is not None
                or self._sample is None
                or self._sample.get("pid") != sample.get("pid")
            ):
                self._cpu = cpu
            self._sample = sample

    # -- state ---------------------------------------------------------------------------

    def observe(
        self,
        session: SessionView | None,
        *,
        connecting: bool = False,
        error: str | None = None,
    ) -> dict[str, Any]:
        """The status message for the current situation."""
        with self._lock:
            info = session.worker_info if session is not None else None
            state, detail, shown_error = self._state(session, info, connecting, error)
            pid = (info or {}).get("pid")
            if info is not None:
                self._spawning = False
                if self._last_pid is not None and pid != self._last_pid:
                    self._detail = "a new worker: the previous one's variables are gone"
                    self._sample, self._cpu = None, None
                self._last_pid = pid
            return self._message(state, detail or self._detail, info, shown_error)

    def _state(
        self,
        session: SessionView | None,
        info: dict[str, Any] | None,
        connecting: bool,
        error: str | None,
    ) -> tuple[State, str, str | None]:
        if session is None:
            if connecting or self._spawning:
                return "starting", "", None
            return "not connected", "", error
        if not session.connected:
            if self._busy or self._spawning or connecting:
                return "starting", "", None
            if self._last_pid is not None:
                return "not connected", "reconnecting to the broker", None
            return "not connected", "connects on first use", error
        if info is None:
            if self._spawning:
                return "starting", "", None
            return "dead", "the worker stopped; the next request or Restart starts a new one", None
        return ("busy" if self._busy else "ready"), "", None

    def _message(
        self, state: State, detail: str, info: dict[str, Any] | None, error: str | None
    ) -> dict[str, Any]:
        worker = None
        if info is not None:
            worker = {"name": self.worker, **{k: info.get(k) for k in ("pid", "host", "python")}}
            worker["rexec"] = info.get("rexec")
        resources = None
        if self._sample is not None and info is not None:
            resources = {
                "cpu_percent": self._cpu,
                "rss_bytes": self._sample.get("rss_bytes"),
                "mem_total_bytes": self._sample.get("mem_total_bytes"),
            }
        env_id = (info or {}).get("env_id") or (info or {}).get("environment")
        return {
            "type": "status",
            # Not "state": tools that inspect comm traffic take a "state" key for widget state.
            "worker_state": state,
            "detail": detail if state in ("ready", "busy", "dead", "not connected") else "",
            "progress": list(self._progress) if state == "starting" else [],
            "worker": worker,
            "env_id": str(env_id) if env_id else None,
            "resources": resources,
            "error": error,
            "source": self.source,
        }

    def changed(self, message: dict[str, Any]) -> bool:
        """True if ``message`` differs from the one last reported (and remember it)."""
        with self._lock:
            if message == self._last:
                return False
            self._last = message
            return True
