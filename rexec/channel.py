"""A connection to the broker, owned by one I/O thread.

ZeroMQ sockets must not be used by two threads at once. Here every use of the DEALER socket
happens under one lock: a thread calling ``send`` sends directly (no hand-off to another thread
in the request's path), and the I/O thread receives, flushes queued messages and keeps the
connection alive. While idle, the I/O thread waits on libzmq's notification file descriptor,
which does not touch the socket, so it never holds the lock while it waits. Both the client
session and the worker use this class.

Inbound messages are dispatched in arrival order, one at a time, by whichever thread reads the
socket: normally the I/O thread; a client thread waiting for its own reply reads the socket
itself (``take``): messages about its request come straight back to it, others are dispatched as
usual (no hand-over between threads in a request's path). After such a caller finished and no
other request waits, the I/O thread stops watching the socket rather than wake for every reply a
caller reads itself; whatever needs it later wakes it (``expect_messages``), and it looks at the
socket every ``SAFETY_POLL_MS`` regardless. A handler may run short work in place, between
``begin_blocking()`` and ``end_blocking()``; if that work turns out to take long, a standby thread
takes over reading and dispatching until it ends, so nothing waits behind it for more than
``standby_after`` seconds.

The channel greets the broker (``hello`` or ``register``) every time a connection is established
and whenever the broker says it does not know this peer (after a broker restart). Messages sent
with ``hold=True`` wait until the greeting is accepted, so a request never reaches a broker that
would refuse it as unauthenticated.

The broker sends a peer at most a *window* of bytes beyond what the peer has read. The channel
counts every byte it reads and tells the broker each quarter window (``credit``), less the bytes
its owner still holds unhandled (``hold_bytes``/``release_bytes``): an owner that falls behind
so stops the flow at the broker instead of buffering without bound here.
"""

from __future__ import annotations

import collections
import logging
import queue
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from rexec import protocol as p
from rexec.errors import ProtocolError
from rexec.transport import (
    HANDSHAKE_FAILURES,
    Waker,
    make_dealer,
    open_monitor,
    read_monitor_events,
    readable,
    receive_message,
    send_message,
)

log = logging.getLogger(__name__)

# (header, payload frames, route tag) -- the tag is None on a client's channel.
MessageHandler = Callable[[dict[str, Any], list[zmq.Frame], bytes | None], None]
# An outbox entry is a message, or a callable run on the I/O thread when it is its turn, returning
# messages. Output streams use callables so text written meanwhile is coalesced into one message.
Deferred = Callable[[], list[Sequence[Any]]]
EventHandler = Callable[[str, dict[str, Any] | None], None]

# Events reported to the owner.
CONNECTED = "connected"
READY = "ready"
DISCONNECTED = "disconnected"
REFUSED = "refused"
UNRESPONSIVE = "unresponsive"
SAFETY_POLL_MS = 50
FULL_SOCKET_POLL_MS = 5
CALLER_SLICE = 0.01
# Messages read at once when they arrive faster than they are handled.
BURST = 64
# Messages sent at most per flush before the I/O thread looks at the socket again.
FLUSH_BUDGET = 256
# How often the standby thread checks for a handler blocking the dispatch of other messages.
STANDBY_CHECK = 0.025
# After this long without work run in place, the standby sleeps until the next such work wakes
# it, so an idle worker does not wake 40 times a second.
STANDBY_DORMANT_AFTER = 1.0
HANDSHAKE_FAILED = "handshake_failed"
# ``take`` could not read: another thread reads the socket and dispatches what arrives.
NOT_READING = object()


class BrokerChannel:
    """A DEALER connection to the broker with its own I/O thread."""

    def __init__(
        self,
        url: str,
        server_public_key: str | None,
        *,
        greeting: Callable[[], list[bytes]],
        ready_type: str,
        on_message: MessageHandler,
        on_event: EventHandler,
        allowed_types: frozenset[str],
        tagged: bool = False,
        ping_stats: Callable[[], dict[str, Any]] | None = None,
        ping_interval: float = 1.0,
        unresponsive_after: float = 10.0,
        standby_after: float | None = None,
        name: str = "rexec-io",
    ) -> None:
        self.url = url
        self._server_public_key = server_public_key
        self._greeting = greeting
        self._ready_type = ready_type
        self._on_message = on_message
        self._on_event = on_event
        # Messages about the connection itself, which the channel handles first.
        self._control = frozenset({p.PONG, p.REFUSED, p.PROBE, ready_type})
        self._allowed = allowed_types | self._control
        self._ping_interval = ping_interval
        self._unresponsive_after = unresponsive_after
        self._tagged = tagged
        self._ping_stats = ping_stats
        self._outbox: collections.deque[Sequence[Any] | Deferred] = collections.deque()
        self._held: collections.OrderedDict[object, Sequence[Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._waker = Waker()
        # True from a ``_wake_io`` until the I/O thread wakes up: further wake-ups are redundant.
        self._wake_requested = False
        # Set by the I/O thread while it dispatches a burst: sends are queued until it ends.
        self._corked = False
        self._closing = threading.Event()
        self._stopping = False  # ``_closing`` as a plain flag, for the I/O loop's every turn
        # True when the last operation on the socket found nothing left to read: the
        # notification fd then signals the next arrival, so the I/O thread may sleep on it.
        self._drained = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._ready = False
        self._connected = False
        self._sock: zmq.Socket | None = None
        # Who reads the socket: the I/O thread, or a thread waiting for its own reply.
        self._receiver = threading.Lock()
        self._caller_receiving = False
        # Whether the I/O thread must wake for arriving messages. False after a caller read its
        # own reply and nothing else waits: the I/O thread then sleeps on everything but the
        # socket (it still reads within SAFETY_POLL_MS), instead of waking for every reply a
        # caller reads itself and contending with it for the GIL and the socket.
        self._watch_socket = True
        self._io_quiet = False  # the I/O thread sleeps without watching the socket
        self._caller_waker = Waker()
        # Polled only by the thread holding ``_receiver``: the socket's fd and the caller waker.
        self._caller_poller: select.poll | None = None
        # Received, not yet dispatched; popped only by the thread holding ``_dispatching``.
        self._inbox: collections.deque[list[zmq.Frame]] = collections.deque()
        self._dispatching = threading.RLock()
        # Set while a handler runs work in place (``begin_blocking``); read by the standby.
        self._blocked_since = 0.0
        self._standby_after = standby_after
        self._standby_dormant = False  # the standby sleeps on ``_standby_wake``
        self._standby_wake = threading.Event()
        self._last_received = time.monotonic()
        self._last_sent = 0.0
        # Flow control (see the module docstring); ``_received`` and ``_credited`` change under
        # ``_lock``, ``_held`` under ``_held_lock``.
        self._received = 0
        self._credited = 0
        self._credit_step = p.DEFAULT_WINDOW // 4
        self._held_bytes = 0
        self._held_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._io_ident: int | None = None
        self._standby_ident: int | None = None

    # -- API for other threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)
        if self._start_error is not None:
            raise self._start_error
        if self._standby_after is not None:
            name = f"{self._thread.name}-standby"
            standby = threading.Thread(target=self._standby, name=name, daemon=True)
            standby.start()
            self._standby_ident = standby.ident

    def in_io_thread(self) -> bool:
        return threading.get_ident() == self._io_ident

    def service_threads(self) -> set[int]:
        """The idents of the threads that read the socket for this channel (once started)."""
        return {ident for ident in (self._io_ident, self._standby_ident) if ident is not None}

    def begin_blocking(self) -> None:
        """A handler runs its work in place: other messages wait for it, and the standby
        watches it. Call ``end_blocking`` in a ``finally``."""
        self._dispatching.release()
        self._blocked_since = time.monotonic()
        # Read after ``_blocked_since`` is set; the standby announces that it sleeps before it
        # reads that, so one of the two sees the other (see ``_sleep_until_work``).
        if self._standby_dormant:
            self._standby_wake.set()

    def end_blocking(self) -> None:
        self._blocked_since = 0.0
        self._dispatching.acquire()

    @property
    def ready(self) -> bool:
        return self._ready

    def send(self, frames: Sequence[Any], *, hold: bool = False, key: object = None) -> None:
        """Send ``frames`` to the broker; with ``hold`` only once the greeting was accepted.

        The calling thread sends directly when nothing is queued before it and no other thread
        uses the socket, so a request does not wait for the I/O thread to wake up; otherwise the
        message joins the queue, in order, and the sender does not wait either.
        """
        lock = self._lock
        if lock.acquire(False):  # positional: no keyword parsing on the hot path
            try:
                if hold and not self._ready:
                    self._held[key if key is not None else object()] = frames
                    return
                wake = self._send_or_queue(frames)
            finally:
                lock.release()
        elif hold and not self._ready:
            with lock:
                if not self._ready:
                    self._held[key if key is not None else object()] = frames
                    return
                wake = self._send_or_queue(frames)
        else:
            self._outbox.append(frames)  # the I/O thread holds the socket; it flushes next
            wake = True
        if wake:
            self._wake_io()

    def send_later(self, produce: Deferred) -> None:
        """Queue a callable that returns the messages to send once it is its turn."""
        self._outbox.append(produce)
        self._wake_io()

    def _wake_io(self) -> None:
        """Wake the I/O thread, unless a wake-up is already on its way."""
        if not self._wake_requested:
            self._wake_requested = True
            self._waker.wake()

    def expect_messages(self) -> None:
        """Have the I/O thread watch the socket: messages will arrive that no caller reads
        (replies delivered to callbacks, a greeting's answer)."""
        self._watch_socket = True
        # Set before reading ``_io_quiet``; the I/O thread sets that before reading this flag,
        # so either it sees the flag or this sees it sleeping and wakes it. While a caller
        # reads, that caller dispatches, and wakes the I/O thread when it stops.
        if self._io_quiet and not self._caller_receiving:
            self._wake_io()

    def is_held(self, key: object) -> bool:
        with self._lock:
            return key in self._held

    def holds_any(self) -> bool:
        """Whether any message waits for the greeting (a cheap check before ``withdraw``)."""
        return bool(self._held)

    def withdraw(self, key: object) -> bool:
        """Drop a held message that was not sent yet; True if it was still held."""
        with self._lock:
            return self._held.pop(key, None) is not None

    def regreet(self) -> None:
        """Forget the session and greet the broker again (e.g. after a refusal)."""
        self._watch_socket = True
        with self._lock:
            self._ready = False
            self._send_or_queue(self._connection_message(self._greeting()))
        self._waker.wake()

    def _connection_message(self, frames: list[bytes]) -> list[bytes]:
        return [p.NO_TAG, *frames] if self._tagged else frames

    def hold_bytes(self, size: int) -> None:
        """The owner keeps ``size`` bytes of a received message to handle later: they do not
        count as read until ``release_bytes`` gives the same number back."""
        with self._held_lock:
            self._held_bytes += size

    def release_bytes(self, size: int) -> None:
        with self._held_lock:
            self._held_bytes = max(0, self._held_bytes - size)
        if self._received - self._credited >= self._credit_step:
            with self._lock:
                self._credit_locked()

    def _credit_locked(self) -> None:
        """Tell the broker what was read, if a quarter window more was; call under ``_lock``."""
        done = self._received - self._held_bytes
        if done - self._credited >= self._credit_step:
            self._credited = done
            self._send_or_queue(self._connection_message(p.make_credit(done)))

    def close(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._closing.set()
        self._standby_wake.set()
        self._waker.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- socket access, always under self._lock ---------------------------------------------

    def _send_or_queue(self, frames: Sequence[Any]) -> bool:
        """Send now if nothing is queued, else queue. True if the I/O thread must wake up.

        While the I/O thread dispatches a burst of messages (``_corked``), messages are queued
        and sent together at its end: ZeroMQ then wakes its own I/O thread once per burst
        rather than once per message.
        """
        sock = self._sock
        if self._corked:
            self._outbox.append(frames)
            return False  # the dispatching I/O thread flushes when the burst ends
        if self._outbox or sock is None:
            self._outbox.append(frames)
            return True
        try:
            send_message(sock, frames)
        except zmq.Again:
            self._outbox.append(frames)
            self._drained = False
            return True
        self._last_sent = time.monotonic()
        # Sending may consume the notification fd's edge for an arrived message; the reader
        # only notices through ZMQ_EVENTS, so wake it when something is readable.
        if readable(sock):
            self._drained = False
            if self._caller_receiving:
                self._caller_waker.wake()
            return True
        self._drained = True
        return False

    def _receive_locked(self, sock: zmq.Socket, limit: int = 1, signalled: bool = False) -> int:
        """Move up to ``limit`` readable messages to the inbox; return how many.

        Normally one: the reader dispatches it before looking for the next, so checking for
        more happens after a request's handler ran (and sent its reply), not before.
        ``signalled``: the socket's fd just signalled, so a message is almost surely queued
        and is received without asking ZMQ_EVENTS first (which costs a system call).
        """
        count = 0
        inbox = self._inbox
        while count < limit:
            if not signalled and not readable(sock):
                self._drained = True
                return count
            signalled = False
            try:
                frames = receive_message(sock)
            except zmq.Again:
                break
            inbox.append(frames)
            for frame in frames:
                self._received += len(frame)
            count += 1
        self._drained = False
        if self._received - self._credited >= self._credit_step:
            self._credit_locked()
        return count

    def _flush_locked(self, sock: zmq.Socket) -> bool:
        """Send queued messages; False if the socket is full and some remain.

        At most ``FLUSH_BUDGET`` per call: output produced as fast as it is sent must not keep
        the I/O thread from reading (a cancel of that very output, say).
        """
        budget = FLUSH_BUDGET
        while self._outbox and budget:
            budget -= 1
            entry = self._outbox[0]
            if callable(entry):
                self._outbox.popleft()
                self._outbox.extendleft(reversed(entry()))
                continue
            self._drained = False
            try:
                send_message(sock, entry)
            except zmq.Again:
                return False
            self._outbox.popleft()
            self._last_sent = time.monotonic()
        return True

    # -- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        context = zmq.Context(io_threads=1)
        try:
            sock = make_dealer(context, self._server_public_key)
            # Monitor before connecting, or the first handshake can happen unseen.
            monitor = open_monitor(sock)
            sock.connect(self.url)
        except BaseException as exc:  # reported to start(); nothing to clean up but the context
            self._start_error = exc
            self._started.set()
            context.term()
            return
        # Poll libzmq's notification fds, not the sockets: waiting on an fd never touches its
        # socket, so other threads may send on it (under the lock) meanwhile. The fds signal
        # edges: after a wake-up the socket is read until it has nothing more.
        fd = int(sock.getsockopt(zmq.FD))
        caller_poller = select.poll()
        caller_poller.register(fd, select.POLLIN)
        caller_poller.register(self._caller_waker.fileno(), select.POLLIN)
        self._caller_poller = caller_poller
        # While a caller reads the socket, the I/O thread waits on everything but its fd.
        quiet = select.poll()
        quiet.register(int(monitor.getsockopt(zmq.FD)), select.POLLIN)
        quiet.register(self._waker.fileno(), select.POLLIN)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(int(monitor.getsockopt(zmq.FD)), select.POLLIN)
        poller.register(self._waker.fileno(), select.POLLIN)
        self._io_ident = threading.get_ident()
        with self._lock:
            self._sock = sock
        self._started.set()
        try:
            self._loop(sock, monitor, poller, quiet)
        except Exception:
            log.exception("broker channel I/O thread failed")
            self._on_event(DISCONNECTED, None)
        finally:
            with self._lock:
                self._sock = None
            monitor.close(linger=0)
            sock.close(linger=0)
            context.term()
            self._waker.close()
            self._caller_waker.close()

    def _loop(
        self, sock: zmq.Socket, monitor: zmq.Socket, poller: select.poll, quiet: select.poll
    ) -> None:
        waker = self._waker
        waker_fd, monitor_fd = waker.fileno(), int(monitor.getsockopt(zmq.FD))
        sock_fd = int(sock.getsockopt(zmq.FD))
        # An fd signals only new arrivals after the socket was read empty once.
        self._handle_monitor(read_monitor_events(monitor))
        streak = 0  # messages received since the loop last slept
        signalled = False  # the socket's fd woke the loop
        while not self._stopping:
            received = 0
            reading = self._receiver.acquire(False)
            try:
                with self._lock:
                    if reading:
                        # The first message after a sleep is handled alone, so its reply leaves
                        # at once; more waiting behind it make a burst, handled corked.
                        received = self._receive_locked(sock, BURST if streak else 1, signalled)
                    flushed = self._flush_locked(sock) if self._outbox else True
            finally:
                if reading:
                    self._receiver.release()
            signalled = False
            if self._inbox:
                if received > 1:
                    self._dispatch_corked(sock)
                else:
                    self._dispatch_inbox()
            if received:
                streak += received
                self._last_received = time.monotonic()
                if not self._drained or self._outbox:
                    continue  # look for the next message before sleeping
                # A handler's reply was sent and nothing more had arrived: sleep at once.
            streak = 0
            self._keepalive()
            # Bounded even when idle: a safety net for a notification edge that was missed.
            timeout_ms = SAFETY_POLL_MS if flushed else FULL_SOCKET_POLL_MS
            sleep_quiet = self._caller_receiving or not self._watch_socket
            if sleep_quiet:
                self._io_quiet = True
                # Checked again after announcing it: see ``expect_messages``.
                sleep_quiet = self._caller_receiving or not self._watch_socket
                self._io_quiet = sleep_quiet
            for fd, _ in (quiet if sleep_quiet else poller).poll(timeout_ms):
                if fd == sock_fd:
                    signalled = True
                elif fd == waker_fd:
                    # Drained first: a wake-up requested between the two is then either still
                    # pending or seen by this thread's next turn, never lost with the flag set.
                    waker.drain()
                    self._wake_requested = False
                elif fd == monitor_fd:
                    self._handle_monitor(read_monitor_events(monitor))
            self._io_quiet = False

    def _dispatch_corked(self, sock: zmq.Socket) -> None:
        """Dispatch a burst, holding back what the handlers send until all ran."""
        with self._lock:
            self._corked = True
        try:
            self._dispatch_inbox()
        finally:
            with self._lock:
                self._corked = False
                self._flush_locked(sock)

    def _dispatch_inbox(self, wait: bool = False) -> bool:
        """Dispatch received messages in order. If another thread is dispatching them, return
        False, or with ``wait`` wait for it and then go on."""
        if not self._dispatching.acquire(wait):
            return False
        try:
            inbox = self._inbox
            while inbox:
                self._handle(inbox.popleft())
        finally:
            self._dispatching.release()
        return True

    def receive_until(
        self, done: Callable[[], bool], timeout: float, others_waiting: Callable[[], bool]
    ) -> bool:
        """Read the socket on the calling thread, dispatching what arrives, until ``done()`` or
        ``timeout`` seconds. Returns False at once if another thread is reading (then wait for
        it to dispatch instead). ``others_waiting()`` tells, when this thread stops reading,
        whether the I/O thread must take over at once; otherwise it does within its idle poll
        interval.
        """
        return self._read_as_caller(None, lambda: not done(), timeout, others_waiting) is not (
            NOT_READING
        )

    def take(
        self,
        request_id: str,
        delivered: queue.SimpleQueue[Any],
        timeout: float,
        others_waiting: Callable[[], bool],
    ) -> tuple[dict[str, Any], list[zmq.Frame]] | object | None:
        """Read the socket on the calling thread for the next message about ``request_id``.

        The synchronous path of a request: the thread waiting for its reply reads it itself,
        and a message about its own request goes straight back to it, not through dispatch and
        a queue; messages about anything else are dispatched as usual. Returns ``(header,
        payload)``; None if ``timeout`` passed or the message was put in ``delivered`` (its
        dispatch queue) meanwhile; ``NOT_READING`` at once if another thread reads the socket
        (then wait on ``delivered``). ``others_waiting`` is as for ``receive_until``.
        """
        return self._read_as_caller(request_id, delivered.empty, timeout, others_waiting)

    def _read_as_caller(
        self,
        claim: str | None,
        waiting: Callable[[], bool],
        timeout: float,
        others_waiting: Callable[[], bool],
    ) -> tuple[dict[str, Any], list[zmq.Frame]] | object | None:
        """Read and dispatch on the calling thread while ``waiting()``, for at most ``timeout``
        seconds; a message about request ``claim`` is returned instead of dispatched. None when
        it stops otherwise; ``NOT_READING`` if another thread holds the socket for reading."""
        poller = self._caller_poller
        if poller is None or not self._receiver.acquire(False):
            self.expect_messages()  # the caller waits for a dispatch: someone must read
            return NOT_READING
        self._caller_receiving = True
        waker_fd = self._caller_waker.fileno()
        try:
            if self._inbox:  # what an I/O thread received before is dispatched first, in order
                self._dispatch_inbox(wait=True)
            end = time.monotonic() + timeout
            # Whether a message may be queued. Not after an operation on the socket (often the
            # send of this very request) found nothing left to read (``_drained``): the fd then
            # signals the next arrival, so this thread first waits for it.
            maybe = not self._drained
            signalled = False  # the fd just signalled: a message is almost surely there
            while waiting():
                if maybe:
                    frames = None
                    with self._lock:
                        sock = self._sock
                        if sock is None:
                            return None
                        if self._outbox:
                            self._flush_locked(sock)
                        if signalled or readable(sock):
                            try:
                                frames = receive_message(sock)
                            except zmq.Again:
                                pass
                            else:
                                for frame in frames:
                                    self._received += len(frame)
                                if self._received - self._credited >= self._credit_step:
                                    self._credit_locked()
                            self._drained = False
                        else:
                            self._drained = True
                    signalled = False
                    if frames is not None:
                        self._last_received = time.monotonic()
                        header = self._parse(frames)
                        if (
                            header is not None
                            and header.get("id") == claim
                            and claim is not None
                            and header["t"] not in self._control
                        ):
                            return header, frames[1 + self._tagged :]
                        self._inbox.append(frames)
                        self._dispatch_inbox(wait=True)
                        continue
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                # Short slices: a notification edge consumed by another thread's send is
                # noticed through the caller waker, or at worst at the next slice.
                maybe = True
                for fd, _ in poller.poll(int(min(remaining, CALLER_SLICE) * 1000) + 1):
                    if fd == waker_fd:
                        self._caller_waker.drain()
                    else:
                        signalled = True
            return None
        finally:
            self._caller_receiving = False
            # Cleared before asking: a request registered meanwhile either sees the flag
            # cleared and sets it again (``expect_messages``) or is among ``others_waiting``.
            self._watch_socket = False
            self._receiver.release()
            if others_waiting():
                self._watch_socket = True
                self._waker.wake()  # the I/O thread reads the socket again

    def _standby(self) -> None:
        """Take over reading while a handler has been blocking dispatch for too long."""
        assert self._standby_after is not None
        idle = 0  # checks in a row that found no work run in place
        dormant_after = round(STANDBY_DORMANT_AFTER / STANDBY_CHECK)
        while not self._closing.wait(STANDBY_CHECK):
            since = self._blocked_since
            if not since:
                idle += 1
                if idle >= dormant_after:
                    self._sleep_until_work()
                    idle = 0
                continue
            idle = 0
            if time.monotonic() - since < self._standby_after:
                continue
            log.debug("a handler blocks dispatch; the standby thread reads meanwhile")
            self._stand_in(since)

    def _sleep_until_work(self) -> None:
        """Sleep until ``begin_blocking`` (or ``close``) wakes the standby."""
        self._standby_dormant = True
        if not self._blocked_since:  # read after announcing: see ``begin_blocking``
            self._standby_wake.wait()
        self._standby_wake.clear()
        self._standby_dormant = False

    def _stand_in(self, since: float) -> None:
        def ended() -> bool:
            return self._blocked_since != since or self._closing.is_set()

        with self._lock:  # what the burst held back leaves now, and later sends go at once
            self._corked = False

        while not ended():
            if not self.receive_until(ended, 1.0, lambda: True):
                time.sleep(STANDBY_CHECK)  # the I/O thread is reading; try again

    def _handle_monitor(self, events: list[int]) -> None:
        for event in events:
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
                self._last_received = time.monotonic()
                with self._lock:  # a new connection: the broker counts from zero again
                    self._received = self._credited = 0
                with self._held_lock:
                    self._held_bytes = 0
                self._on_event(CONNECTED, None)
                self.regreet()
            elif event == zmq.EVENT_DISCONNECTED:
                self._connected = False
                self._ready = False
                self._on_event(DISCONNECTED, None)
            elif event in HANDSHAKE_FAILURES:
                self._on_event(HANDSHAKE_FAILED, {"event": event})

    def _parse(self, frames: list[zmq.Frame]) -> dict[str, Any] | None:
        """The header of a received message; None (logged) if it is malformed."""
        start = 1 if self._tagged else 0
        if len(frames) <= start:
            return None
        try:
            return p.parse_header(frames[start].bytes, self._allowed)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return None

    def _handle(self, frames: list[zmq.Frame]) -> None:
        header = self._parse(frames)
        if header is None:
            return
        start = 1 if self._tagged else 0
        tag = frames[0].bytes if self._tagged else None
        try:
            if header["t"] in self._control:
                self._handle_control(header, frames[start + 1 :], tag)
            else:  # requests, replies, outputs: straight to the owner
                self._on_message(header, frames[start + 1 :], tag)
        except Exception:
            log.exception("handling a %r message failed; the connection carries on", header["t"])

    def _handle_control(
        self, header: dict[str, Any], payload: list[zmq.Frame], tag: bytes | None
    ) -> None:
        """A message about the connection itself (one of ``self._control``)."""
        msg_type = header["t"]
        if msg_type in (p.PONG, p.PROBE):
            return
        if msg_type == p.REFUSED:
            code = (header.get("error") or {}).get("code")
            if code == p.E_UNAUTHENTICATED:
                self.regreet()
            else:
                self._on_event(REFUSED, header)
            return
        if msg_type == self._ready_type:
            window = header.get("window")
            if type(window) is int and window > 0:
                self._credit_step = max(1, window // 4)
            with self._lock:
                self._ready = True
                self._outbox.extend(self._held.values())
                self._held.clear()
            self._on_message(header, payload, tag)
            self._on_event(READY, header)

    def _keepalive(self) -> None:
        if not self._connected:
            return
        now = time.monotonic()
        if now - self._last_received > self._unresponsive_after:
            self._last_received = now
            self._ready = False
            self._on_event(UNRESPONSIVE, None)
            self.regreet()
        elif now - self._last_sent >= self._ping_interval:
            stats = self._ping_stats() if self._ping_stats else None
            with self._lock:
                self._send_or_queue(self._connection_message(p.make_ping(stats)))
