"""A client session: one authenticated connection to the broker, and the user's worker behind it.

``Session.call`` ships a function and its arguments and returns the result; ``execute`` runs a
cell in the worker's persistent namespace; output streams back live through an output handler
while the request runs. Every wait has a deadline or ends when the connection or the worker is
known to be gone.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq

from rexec import protocol as p
from rexec import serialization as ser
from rexec.channel import (
    DISCONNECTED,
    NOT_READING,
    READY,
    REFUSED,
    UNRESPONSIVE,
    BrokerChannel,
)
from rexec.client.generators import RemoteGenerator
from rexec.client.outputs import CURRENT_CONSOLE, ConsoleOutput, OutputHandler
from rexec.client.replies import cell_reply, load_value, raise_for_reply, refusal_error, result_of
from rexec.client.skew import check_skew, local_info, ships_source
from rexec.client.spawner import SpawnerClient
from rexec.client.window import Delivery, Pending, RequestWindow
from rexec.errors import (
    CallTimeout,
    ConfigError,
    ConnectionLost,
    PayloadTooLarge,
    WorkerUnavailable,
)
from rexec.profile import Profile, load_profile

CONNECT_TIMEOUT = 30.0
WORKER_READY_TIMEOUT = 120.0
CANCEL_GRACE = 5.0
# Without a spawner nothing will start a worker for us; wait briefly for one re-registering
# (after a broker restart), then report that none is there.
UNSPAWNED_WORKER_WAIT = 5.0
# While waiting for a worker to register, how often the spawner is asked how it is doing.
RECHECK_SPAWNER = 2.0
_LOST = "_lost"
# The arguments of a call without any, serialized once.
_NO_ARGUMENTS = ser.dumps(((), {}))


class Session:
    """An authenticated session with the broker for one user and one worker name."""

    def __init__(
        self,
        profile: Profile | None = None,
        *,
        spawn: bool = True,
        worker_ready_timeout: float = WORKER_READY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.profile = profile or load_profile()
        self.profile.require_token()
        self._spawn = spawn and bool(self.profile.spawner_url)
        self._worker_ready_timeout = worker_ready_timeout
        self._connect_timeout = connect_timeout
        self._progress = progress or _print_progress
        self._spawner = (
            SpawnerClient(self.profile.spawner_url, self.profile.require_token())
            if self.profile.spawner_url
            else None
        )
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._window = RequestWindow()
        self._lock = threading.Lock()
        self._welcome = threading.Event()
        self._worker_online = threading.Condition(self._lock)
        self._refusal: dict[str, Any] | None = None
        self._shipper = ser.FunctionShipper()
        self._worker_has: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._channel: BrokerChannel | None = None
        self._closed = False
        self.user: str | None = None
        self.worker_info: dict[str, Any] | None = None
        self.max_bytes = 512 * 1024 * 1024
        self.skew_warnings: list[str] = []

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> Session:
        """Start the worker if needed and authenticate with the broker. Idempotent."""
        if self._channel is not None:
            return self
        broker_url, public_key = self.profile.broker_url, self.profile.broker_public_key
        if self._spawner is not None:
            if self._spawn:
                status = self._ensure_worker()
                broker = status.get("broker") or {}
            else:
                broker = self._spawner.broker()
            broker_url = broker_url or broker.get("url")
            public_key = public_key or broker.get("public_key")
        if not broker_url:
            raise ConfigError("no broker address: set REXEC_BROKER_URL or REXEC_SPAWNER_URL")
        channel = BrokerChannel(
            broker_url,
            public_key,
            greeting=self._hello,
            ready_type=p.WELCOME,
            on_message=self._on_message,
            on_event=self._on_event,
            allowed_types=frozenset({p.REPLY, p.OUTPUT, p.ITEM, p.WORKER_STATE}),
            name="rexec-client-io",
        )
        self._channel = channel
        channel.start()
        if not self._welcome.wait(self._connect_timeout):
            self.close()
            raise ConnectionLost(
                f"no answer from the broker at {broker_url} within {self._connect_timeout:.0f} s; "
                "check the address and that the broker runs (`rexec status`)"
            )
        if self._refusal is not None:
            refusal = self._refusal
            self.close()
            raise refusal_error(refusal)
        return self

    @property
    def max_in_flight(self) -> int:
        """Requests sent at once; more wait on the client (the broker announces its limit)."""
        return self._window.limit

    @max_in_flight.setter
    def max_in_flight(self, limit: int) -> None:
        self._window.limit = limit

    @property
    def connected(self) -> bool:
        """True while the session is authenticated with the broker."""
        return self._channel is not None and not self._closed and self._channel.ready

    @property
    def closed(self) -> bool:
        return self._closed

    def _hello(self) -> list[bytes]:
        return p.make_hello(self.profile.require_token(), self.profile.worker, local_info())

    def _ensure_worker(self) -> dict[str, Any]:
        assert self._spawner is not None
        return self._spawner.ensure_worker(
            self.profile.worker, self._worker_ready_timeout, self._progress
        )

    def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._spawner is not None:
            self._spawner.close()
        self._fail_all("the session was closed")

    def __enter__(self) -> Session:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def delete_worker(self) -> bool:
        """Ask the spawner to stop this user's worker (its state is lost)."""
        if self._spawner is None:
            raise ConfigError("deleting a worker needs the spawner URL (REXEC_SPAWNER_URL)")
        return self._spawner.delete_worker(self.profile.worker)

    # -- channel callbacks (I/O thread) ----------------------------------------------------

    def _on_message(
        self, header: dict[str, Any], payload: list[zmq.Frame], tag: bytes | None
    ) -> None:
        msg_type = header["t"]
        if msg_type == p.WELCOME:
            self.user = header.get("user")
            self.max_bytes = int(header.get("max_bytes") or self.max_bytes)
            self.max_in_flight = max(1, int(header.get("max_in_flight") or self.max_in_flight))
            self._set_worker_info(header.get("worker_info"))
            return
        if msg_type == p.WORKER_STATE:
            info = header.get("worker_info") if header.get("state") == "online" else None
            self._set_worker_info(info)
            return
        pending = self._window.open.get(header.get("id", ""))  # one dict read needs no lock
        if pending is not None:
            if pending.callback is None and self._channel is not None:
                # Queued for a waiting thread: not read until it takes it (see ``_took``).
                self._channel.hold_bytes(_held_size(payload))
            pending.deliver(header, payload)

    def _set_worker_info(self, info: dict[str, Any] | None) -> None:
        with self._lock:
            changed = info is not None and info != self.worker_info
            self.worker_info = info
            if changed:
                self._worker_has.clear()
                self.skew_warnings = check_skew(info or {})
                self._shipper.by_source = ships_source(info)
                for message in self.skew_warnings:
                    warnings.warn(message, stacklevel=2)
            self._worker_online.notify_all()

    def _on_event(self, event: str, header: dict[str, Any] | None) -> None:
        if event == READY:
            self._refusal = None
            self._welcome.set()
        elif event == REFUSED and header is not None:
            self._refusal = header.get("error") or {}
            self._welcome.set()
            self._fail_all(None, refusal=self._refusal)
        elif event in (DISCONNECTED, UNRESPONSIVE):
            self._fail_all(
                "lost the connection to the broker while this request was in flight; it may or "
                "may not have run. Retry it; the session reconnects by itself"
            )

    def _fail_all(self, message: str | None, refusal: dict[str, Any] | None = None) -> None:
        """End pending requests after a lost connection or a refusal.

        After a lost connection, requests still held for the next greeting stay: they will be
        sent once the session is re-established. After a refusal nothing will be sent, so they
        end too.
        """
        pending = self._window.snapshot()
        channel = None if self._closed else self._channel
        for item in pending:
            if channel is not None:
                if refusal is not None:
                    channel.withdraw(item.id)
                elif not item.sent or channel.is_held(item.id):
                    continue  # not sent yet: it will be, on the next connection
            error = refusal or {"code": _LOST, "message": message}
            item.deliver({"t": _LOST, "error": error}, [])

    # -- requests --------------------------------------------------------------------------

    def _start(
        self, frames_for: Callable[[str], list[Any]], callback: Delivery | None = None
    ) -> tuple[Pending, list[Any]]:
        channel = self._channel
        if channel is None:
            self.connect()
            channel = self._channel
            assert channel is not None
        request_id = f"{self._prefix}-{next(self._ids)}"
        frames = frames_for(request_id)
        size = p.message_size(frames)
        if size > self.max_bytes:
            raise PayloadTooLarge(
                f"this request is {size:,} bytes, over the broker's limit of {self.max_bytes:,}; "
                "pass large data in pieces or through shared storage"
            )
        pending = Pending(request_id, callback)
        send_now = self._window.add(pending, frames)
        if callback is not None:
            # No caller thread reads this reply; registered first, so see ``expect_messages``.
            channel.expect_messages()
        if send_now:
            channel.send(frames, hold=True, key=request_id)
        return pending, frames

    def _resend(self, pending: Pending, frames: list[Any]) -> None:
        assert self._channel is not None
        self._channel.send(frames, hold=True, key=pending.id)

    def _took(self, item: tuple[dict[str, Any], list[zmq.Frame]]) -> None:
        """A waiting thread took a queued message: its bytes count as read now."""
        if self._channel is not None:
            self._channel.release_bytes(_held_size(item[1]))

    def _finish(self, pending: Pending) -> None:
        release = self._window.finish(pending)
        channel = self._channel
        if channel is None:
            return
        while not pending.events.empty():  # left unread: no longer held for anyone
            self._took(pending.events.get_nowait())
        for waiting, frames in release:
            channel.send(frames, hold=True, key=waiting.id)
        if channel.holds_any():
            channel.withdraw(pending.id)

    def _next_message(
        self, pending: Pending, deadline: float | None, output: OutputHandler
    ) -> tuple[dict[str, Any], list[zmq.Frame]]:
        """Wait for the next item or reply of ``pending``, handing outputs to ``output``.

        When no other thread is reading the socket, this thread reads it itself, so a reply
        does not wait for the I/O thread to wake up and hand it over.
        """
        events = pending.events
        while True:
            if not events.empty():
                item = events.get_nowait()
                self._took(item)
            else:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                channel = self._channel
                taken = (
                    NOT_READING
                    if channel is None
                    else channel.take(pending.id, events, wait, self._window.others_open)
                )
                if taken is NOT_READING:
                    try:
                        item = events.get(timeout=wait)
                        self._took(item)
                    except queue.Empty:
                        item = None
                elif taken is None:
                    item = None
                    if not events.empty():
                        item = events.get_nowait()
                        self._took(item)
                else:
                    item = taken  # type: ignore[assignment]
            # Checked on every message too: output arriving without pause must not keep a
            # request past its deadline.
            if deadline is not None and time.monotonic() >= deadline:
                raise CallTimeout("the request did not finish before its deadline")
            if item is None:
                if self._closed:
                    raise ConnectionLost("the session was closed")
                continue
            header, payload = item
            if header["t"] == p.OUTPUT:
                output.handle(header.get("mt", ""), p.parse_json_frame(payload[0]))
                continue
            return header, payload

    def _interrupt(self, pending: Pending, output: OutputHandler) -> None:
        """Cancel a request on the worker and wait briefly for it to stop."""
        assert self._channel is not None
        if self._window.withdraw_waiting(pending) or self._channel.withdraw(pending.id):
            return
        self._channel.send(p.make_cancel(pending.id))
        deadline = time.monotonic() + CANCEL_GRACE
        try:
            while True:
                header, _ = self._next_message(pending, deadline, output)
                if header["t"] in (p.REPLY, _LOST):
                    return
                self._channel.send(p.make_cancel(pending.id))
        except (CallTimeout, ConnectionLost):
            return

    def _run(
        self,
        frames_for: Callable[[str], list[Any]],
        timeout: float | None,
        output: OutputHandler,
        retry: Callable[[dict[str, Any], list[Any]], list[Any] | None] | None = None,
    ) -> tuple[dict[str, Any], list[zmq.Frame]]:
        """Send a request and return its terminal reply, recovering from a missing worker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending, frames = self._start(frames_for)
        recovered = False
        keep_open = False
        try:
            while True:
                try:
                    header, payload = self._next_message(pending, deadline, output)
                except CallTimeout:
                    self._interrupt(pending, output)
                    raise CallTimeout(
                        f"the request did not finish within {timeout} s and was cancelled"
                    ) from None
                except KeyboardInterrupt:
                    self._interrupt(pending, output)
                    raise
                msg_type = header["t"]
                if msg_type == p.ITEM:
                    keep_open = True  # a generator: the request lives on for ``next``
                    return header, payload
                if msg_type != p.REPLY or header.get("status") == p.STATUS_OK:
                    return header, payload
                code = (header.get("error") or {}).get("code")
                if code == p.E_NO_WORKER and not recovered:
                    recovered = True
                    self._recover_worker(deadline)
                    self._resend(pending, frames)
                    continue
                if code == p.E_UNAUTHENTICATED and not recovered:
                    recovered = True
                    assert self._channel is not None
                    self._channel.regreet()
                    self._resend(pending, frames)
                    continue
                replacement = retry(header, frames) if retry is not None else None
                if replacement is not None:
                    frames = replacement
                    self._resend(pending, frames)
                    continue
                return header, payload
        finally:
            if not keep_open:
                self._finish(pending)

    def _recover_worker(self, deadline: float | None) -> None:
        """The broker has no worker for us: start one (spawner) or wait for one to register.

        With a spawner, its view is checked again every few seconds meanwhile: a worker that
        failed to come back (it hung and was stopped, say) is replaced instead of waited for.
        """
        limit = self._worker_ready_timeout
        if deadline is not None:
            limit = max(1.0, min(limit, deadline - time.monotonic()))
        spawning = self._spawner is not None and self._spawn
        if spawning:
            self._progress("the worker is gone; starting a new one (its state is lost)")
            self._ensure_within(limit)
        else:
            limit = min(limit, UNSPAWNED_WORKER_WAIT)
        end = time.monotonic() + limit
        while True:
            with self._lock:
                if self.worker_info is not None:
                    return
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise WorkerUnavailable(
                        f"no worker named {self.profile.worker!r} is registered for you; "
                        "start one with the spawner (REXEC_SPAWNER_URL) or `rexec up`"
                    )
                self._worker_online.wait(min(remaining, RECHECK_SPAWNER))
                if self.worker_info is not None:
                    return
            if spawning:
                assert self._spawner is not None
                status = self._spawner.get_worker(self.profile.worker)
                if status is None or status.get("state") in ("failed", "stopped"):
                    self._progress("the worker did not come back; starting a new one")
                    self._ensure_within(max(1.0, end - time.monotonic()))

    def _ensure_within(self, limit: float) -> None:
        assert self._spawner is not None
        self._spawner.ensure_worker(self.profile.worker, limit, self._progress)

    # -- public operations -----------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        output: OutputHandler | None = None,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` on the worker and return its result."""
        handler = output or CURRENT_CONSOLE
        header, payload, pending_gen = self._call(fn, args, kwargs or {}, timeout, handler)
        if header["t"] == p.ITEM:
            return pending_gen
        return result_of(header, payload)

    def _call_frames(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, Callable[..., list[Any]]]:
        """The function's key and a builder of request frames (with or without the function)."""
        key, fn_bytes = self._shipper.pack(fn)
        packed = _NO_ARGUMENTS if not args and not kwargs else ser.dumps((args, kwargs))
        # Read without the lock: if the worker lost the function meanwhile, it says so and the
        # call is sent again with the function (``retry`` in ``_call``).
        inline = key not in self._worker_has

        def frames_for(request_id: str, with_fn: bool = inline) -> list[Any]:
            body = [fn_bytes, *packed.frames] if with_fn else packed.frames
            return p.make_call(
                request_id, key, body, inline=with_fn, ser=packed.ser, buffers=len(packed.buffers)
            )

        return key, frames_for

    def _call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        output: OutputHandler,
    ) -> tuple[dict[str, Any], list[zmq.Frame], Any]:
        key, frames_for = self._call_frames(fn, args, kwargs)

        def retry(header: dict[str, Any], frames: list[Any]) -> list[Any] | None:
            if (header.get("error") or {}).get("code") != p.E_UNKNOWN_FUNCTION:
                return None
            return frames_for(header["id"], with_fn=True)

        header, payload = self._run(frames_for, timeout, output, retry)
        if key not in self._worker_has and (
            header["t"] == p.ITEM or header.get("status") == p.STATUS_OK
        ):
            with self._lock:
                self._worker_has.add(key)
        if header["t"] == p.ITEM:
            return header, payload, RemoteGenerator(self, header["id"], timeout, output)
        return header, payload, None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start ``fn(*args, **kwargs)`` on the worker; return a ``concurrent.futures.Future``.

        Many submitted calls are in flight at once without a thread each: the I/O thread
        completes the future when the reply arrives. Output goes to the ``sys.stdout`` and
        ``sys.stderr`` current at submission.
        """
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        output = ConsoleOutput()
        key, frames_for = self._call_frames(fn, args, kwargs)

        def slow_path() -> None:
            try:
                future.set_result(self.call(fn, args, kwargs, output=output))
            except BaseException as exc:
                future.set_exception(exc)

        def on_message(pending: Pending, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
            msg_type = header["t"]
            if msg_type == p.OUTPUT:
                output.handle(header.get("mt", ""), p.parse_json_frame(payload[0]))
                return
            if msg_type == p.ITEM:
                pending.callback = None  # a generator: the iterator pulls its items
                future.set_result(RemoteGenerator(self, pending.id, None, output))
                return
            self._finish(pending)
            code = (header.get("error") or {}).get("code")
            if code in (p.E_NO_WORKER, p.E_UNKNOWN_FUNCTION, p.E_UNAUTHENTICATED):
                # The request did not run: redo it on the blocking path, which recovers.
                self._slow_executor().submit(slow_path)
                return
            try:
                future.set_result(result_of(header, payload))
                if key not in self._worker_has:
                    with self._lock:
                        self._worker_has.add(key)
            except BaseException as exc:
                future.set_exception(exc)

        self._start(frames_for, on_message)
        return future

    def _slow_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(8, "rexec-recover")
            return self._executor

    def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        timeout: float | None = None,
        output: OutputHandler | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run a cell in the worker's namespace; return the Jupyter execute_reply content."""
        handler = output or CURRENT_CONSOLE

        def frames_for(request_id: str) -> list[Any]:
            return p.make_request(
                request_id,
                p.OP_EXECUTE,
                [
                    code.encode(),
                    *([p.make_json_frame(user_expressions)] if user_expressions else []),
                ],
                silent=silent or None,
                store_history=store_history,
            )

        header, payload = self._run(frames_for, timeout, handler)
        return cell_reply(header, payload)

    def complete(
        self, code: str, cursor_pos: int | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        return self._introspect(p.OP_COMPLETE, {"code": code, "cursor_pos": cursor_pos}, timeout)

    def inspect(
        self, code: str, cursor_pos: int | None = None, detail_level: int = 0, timeout: float = 10.0
    ) -> dict[str, Any]:
        request = {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level}
        return self._introspect(p.OP_INSPECT, request, timeout)

    def _introspect(self, op: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        def frames_for(request_id: str) -> list[Any]:
            return p.make_request(request_id, op, [p.make_json_frame(request)])

        header, payload = self._run(frames_for, timeout, CURRENT_CONSOLE)
        raise_for_reply(header, payload)
        return dict(p.parse_json_frame(payload[0]))

    # -- generators ------------------------------------------------------------------------

    def _generator_step(
        self, request_id: str, timeout: float | None, output: OutputHandler
    ) -> tuple[bool, Any]:
        """Ask for the next item: ``(True, item)``, or ``(False, return value)`` at the end."""
        pending = self._window.open.get(request_id)
        if pending is None or self._channel is None:
            raise ConnectionLost("the generator's request is no longer active")
        self._channel.send(p.make_next(request_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            header, payload = self._next_message(pending, deadline, output)
        except (CallTimeout, KeyboardInterrupt):
            self._interrupt(pending, output)
            self._finish(pending)
            raise
        if header["t"] == p.ITEM:
            return True, load_value(header, payload)
        self._finish(pending)
        return False, result_of(header, payload)

    def _close_generator(self, request_id: str) -> None:
        pending = self._window.open.get(request_id)
        if pending is not None and self._channel is not None and not self._closed:
            self._channel.send(p.make_cancel(request_id))
            self._finish(pending)


def _held_size(payload: list[Any]) -> int:
    """How many bytes a queued message is taken to hold: the same for ``hold_bytes`` and
    ``release_bytes`` of one message, which is all the count needs."""
    return sum(len(frame) for frame in payload) + 256


def _print_progress(message: str) -> None:
    if message and not os.environ.get("REXEC_QUIET"):
        print(f"rexec: {message}", file=sys.stderr, flush=True)
