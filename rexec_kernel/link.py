"""The kernel's link to the worker: a ``Session`` connected in the background at start.

The kernel must answer ``kernel_info`` at once, while starting a worker can take a while (a
cold pod). So the session connects on a thread; its progress messages are kept until a cell
can show them (there is no request to attach them to before), and shown live afterwards.

    >>> link = WorkerLink(lambda progress: None)   # no session at all: only progress tracking
    >>> link.progress("starting worker")
    >>> with link.live(print):
    ...     pass
    starting worker
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rexec.client.session import Session

Progress = Callable[[str], None]
SessionFactory = Callable[[Progress], Session | None]

JOIN_SLICE = 0.2


class WorkerLink:
    """Owns the kernel's session; ``session()`` returns it connected or raises why not."""

    def __init__(self, make_session: SessionFactory) -> None:
        self._make_session = make_session
        self._lock = threading.Lock()
        self._backlog: list[str] = []
        self._sink: Progress | None = None
        self._session: Session | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # Also told every progress message as it happens (the status bar's spawn progress).
        self.listener: Progress | None = None

    # -- progress ------------------------------------------------------------------------

    def progress(self, message: str) -> None:
        """Show ``message`` in the running cell, or keep it for the next one."""
        if not message:
            return
        if self.listener is not None:
            self.listener(message)
        with self._lock:
            sink = self._sink
            if sink is None:
                self._backlog.append(message)
                return
        sink(message)

    @contextmanager
    def live(self, sink: Progress) -> Iterator[None]:
        """While a cell runs, progress goes to ``sink``; kept messages are shown first."""
        with self._lock:
            backlog, self._backlog = self._backlog, []
            self._sink = sink
        for message in backlog:
            sink(message)
        try:
            yield
        finally:
            with self._lock:
                self._sink = None

    # -- connection ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect on a background thread (spawning or reattaching the worker)."""
        self._thread = threading.Thread(target=self._connect, name="rexec-kernel-connect")
        self._thread.daemon = True
        self._thread.start()

    def _connect(self) -> None:
        session: Session | None = None
        try:
            session = self._make_session(self.progress)
            if session is not None:
                session.connect()
        except BaseException as exc:
            if session is not None:
                session.close()
            with self._lock:
                self._error = exc
            return
        with self._lock:
            self._session, self._error = session, None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the background connection; True once it has ended."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def ready_session(self) -> Session | None:
        """The session if it is connected now, without waiting (for completion, inspection)."""
        with self._lock:
            session = self._session
        return None if session is None or session.closed else session

    def session(self) -> Session:
        """The connected session: waits for the background connection, or retries it here.

        Raises what connecting raised (``ConfigError`` when no stack is found, ...).
        ``KeyboardInterrupt`` while waiting stops the wait, not the connection attempt.
        """
        thread = self._thread
        while thread is not None and thread.is_alive():
            thread.join(JOIN_SLICE)
        with self._lock:
            session = self._session
        if session is not None and not session.closed:
            return session
        # Connect (again) in the foreground: the user may have started the stack since.
        self._thread = None
        self._connect()
        with self._lock:
            session, error = self._session, self._error
        if session is None:
            raise error or RuntimeError("no Rexec session could be created")
        return session

    def snapshot(self) -> tuple[Session | None, bool, BaseException | None]:
        """The session (or None), whether a background connection is under way, and the
        error of the last failed attempt; without waiting."""
        with self._lock:
            session, error = self._session, self._error
        thread = self._thread
        return session, thread is not None and thread.is_alive(), error

    def worker_info(self) -> dict[str, Any] | None:
        with self._lock:
            session = self._session
        return session.worker_info if session is not None else None

    def close(self) -> Session | None:
        """Forget the session and return it (the caller closes it, after a last request)."""
        with self._lock:
            session, self._session = self._session, None
        return session
