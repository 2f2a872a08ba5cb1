"""Per-request state on the worker: where output goes, and how a request is interrupted.

User code writes to ``sys.stdout``; a ``RoutedStream`` sends the text to the request running on
the current thread. Text is buffered per request and handed to the I/O thread as a deferred
message, so a burst of prints becomes one message while a lone print leaves immediately.

When the client reading a request's output falls behind, the broker asks the worker to pause
that request (``flow``): the request's next write then waits until it is resumed (or cancelled),
which is how a flood of output is slowed down at its source. At most ``MAX_PENDING_TEXT`` of
output waits here for the I/O thread; a writer beyond it waits too. Threads that serve the
connection itself never wait (``never_wait_in``), so they can always deliver the resume.
"""

from __future__ import annotations

import ctypes
import io
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rexec import protocol as p

MAX_STREAM_CHUNK = 1024 * 1024
# Output of one request waiting for the I/O thread, in characters, before its writers wait.
MAX_PENDING_TEXT = 8 * 1024 * 1024
FLOW_CHECK = 0.5  # seconds between checks, while waiting, that the request still runs

_local = threading.local()
# Requests running user code, newest last. Appends and removals are single list operations,
# atomic under the GIL; readers tolerate the list changing under them.
_active: list[RequestContext] = []
_last: list[RequestContext | None] = [None]  # the request that most recently ran user code
_before_finish: list[Callable[[], None]] = []
_service_threads: set[int] = set()


def never_wait_in(thread_id: int) -> None:
    """Writes from this thread never wait for paused output (the worker's I/O threads)."""
    _service_threads.add(thread_id)


def last_context() -> RequestContext | None:
    return _last[0]


def run_before_finish(hook: Callable[[], None]) -> None:
    """Run ``hook`` before any request sends its reply (to flush captured output)."""
    _before_finish.append(hook)


def current_context() -> RequestContext | None:
    """The request of this thread; for threads user code started, the newest active request."""
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        return ctx
    try:
        return _active[-1]
    except IndexError:
        return None


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class RequestContext:
    """One request in progress: its route, its pending output and its interruption."""

    __slots__ = (
        "_commands",
        "_flowing",
        "_in_user_code",
        "_interrupt",
        "_lock",
        "_pending",
        "_pending_text",
        "_scheduled",
        "_send",
        "_send_later",
        "_thread_id",
        "cancelled",
        "finished",
        "op",
        "request_id",
        "tag",
    )

    def __init__(
        self,
        tag: bytes,
        request_id: str,
        op: str,
        send: Callable[[Sequence[Any]], None],
        send_later: Callable[[Callable[[], list[Sequence[Any]]]], None],
    ) -> None:
        self.tag = tag
        self.request_id = request_id
        self.op = op
        self._commands: queue.SimpleQueue[str] | None = None
        self.cancelled = False
        self._send = send
        self._send_later = send_later
        self._pending: list[list[Any]] = []
        self._pending_text = 0
        self._scheduled = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._in_user_code = False
        self._interrupt: Callable[[], None] | None = None
        self.finished = False

    @property
    def commands(self) -> queue.SimpleQueue[str]:
        """``next``/``cancel`` commands for a generator; created on first use."""
        with self._lock:
            if self._commands is None:
                self._commands = queue.SimpleQueue()
            return self._commands

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.tag, self.request_id)

    # -- output ----------------------------------------------------------------------------

    def set_flow(self, flowing: bool) -> None:
        """Pause (False) or resume (True) this request's output, as the broker asks."""
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _wait_to_write(self) -> None:
        """Wait while the output is paused or too much of it waits to be sent; never in the
        connection's own threads (unless they run this request's code), never once the
        request ended or was cancelled."""
        me = threading.get_ident()
        if me in _service_threads and me != self._thread_id:
            return
        while not self.cancelled and not self.finished:
            if self._flowing.is_set():
                if self._pending_text <= MAX_PENDING_TEXT:
                    return
                time.sleep(0.005)  # the I/O thread is taking the pending text
            else:
                self._flowing.wait(FLOW_CHECK)

    def write_stream(self, name: str, text: str) -> None:
        if not self._flowing.is_set() or self._pending_text > MAX_PENDING_TEXT:
            self._wait_to_write()
        with self._lock:
            self._pending_text += len(text)
            last = self._pending[-1] if self._pending else None
            if last is not None and last[0] == "stream" and last[1] == name:
                last[2] += text
            else:
                self._pending.append(["stream", name, text])
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._send_later(self._take_messages)

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        """A Jupyter output other than a stream (display_data, execute_result, error...)."""
        if not self._flowing.is_set():
            self._wait_to_write()
        with self._lock:
            self._pending.append(["output", msg_type, content])
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._send_later(self._take_messages)

    def _take_messages(self) -> list[Sequence[Any]]:
        with self._lock:
            pending, self._pending = self._pending, []
            self._pending_text = 0
            self._scheduled = False
        messages: list[Sequence[Any]] = []
        for kind, name, body in pending:
            if kind == "stream":
                for start in range(0, len(body), MAX_STREAM_CHUNK):
                    chunk = body[start : start + MAX_STREAM_CHUNK]
                    content = {"name": name, "text": chunk}
                    messages.append([self.tag, *p.make_output(self.request_id, "stream", content)])
            else:
                messages.append([self.tag, *p.make_output(self.request_id, name, body)])
        return messages

    def send(self, frames: Sequence[Any]) -> None:
        """Send a message about this request after all output written so far."""
        if self._pending:  # one read: text written after it may follow the message anyway
            self._send_later(self._take_messages)
        self._send([self.tag, *frames])

    def finish(self, frames: Sequence[Any]) -> None:
        """Send the terminal reply; nothing about this request is sent afterwards."""
        for hook in _before_finish:
            hook()
        self.finished = True
        self._flowing.set()
        self.send(frames)

    # -- running user code -----------------------------------------------------------------

    @contextmanager
    def activate(self, interrupt: Callable[[], None] | None = None) -> Iterator[None]:
        """Run user code for this request on the current thread."""
        previous = self.enter(interrupt)
        try:
            yield
        finally:
            self.leave(previous)

    def enter(self, interrupt: Callable[[], None] | None = None) -> RequestContext | None:
        """Start running user code for this request on the current thread; returns what
        ``leave`` needs. Raises KeyboardInterrupt if the request was cancelled already."""
        previous: RequestContext | None = getattr(_local, "ctx", None)
        _local.ctx = self
        _active.append(self)
        _last[0] = self
        with self._lock:
            self._thread_id = threading.get_ident()
            self._interrupt = interrupt
            self._in_user_code = True
            cancelled = self.cancelled
        if cancelled:
            self.leave(previous)
            raise KeyboardInterrupt
        return previous

    def leave(self, previous: RequestContext | None) -> None:
        """The user code started by ``enter`` returned (or raised)."""
        with self._lock:
            self._in_user_code = False
            if self.cancelled and self._interrupt is None and self._thread_id is not None:
                _async_raise(self._thread_id, None)  # drop an interrupt that came too late
        _local.ctx = previous
        try:
            _active.remove(self)
        except ValueError:
            pass

    def cancel(self) -> None:
        """Interrupt this request: KeyboardInterrupt in its user code, or stop its generator."""
        with self._lock:
            already = self.cancelled
            self.cancelled = True
            if self._in_user_code and not already:
                if self._interrupt is not None:
                    self._interrupt()
                elif self._thread_id is not None:
                    _async_raise(self._thread_id, KeyboardInterrupt)
        self._flowing.set()  # a writer waiting for a resume sees the cancellation
        self.commands.put(p.CANCEL)


class RoutedStream(io.TextIOBase):
    """A ``sys.stdout``/``sys.stderr`` that sends text to the current request."""

    def __init__(self, name: str, fallback: TextIO) -> None:
        self.name = name
        self._fallback = fallback

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fallback.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        ctx = current_context()
        if ctx is None or ctx.finished:
            self._fallback.write(text)
        elif text:
            ctx.write_stream(self.name, text)
        return len(text)

    def flush(self) -> None:
        ctx = current_context()
        if ctx is None:
            self._fallback.flush()
