"""ZeroMQ socket setup shared by the client, the worker and the broker.

Liveness is layered:

* ZMTP heartbeats (libzmq's own PING/PONG, answered by libzmq's I/O thread without the GIL) close
  a connection whose peer stopped answering, even while the peer's Python code holds the GIL.
* Socket monitors tell the owner when a connection is established or lost.
* App-level ``ping``/``pong`` tell a peer that the broker still knows its session (after a broker
  restart it does not, and the peer greets it again).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from rexec.credentials import write_secret_file
from rexec.errors import ConfigError

HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
RECONNECT_MS = 100
RECONNECT_MAX_MS = 2000
# Queue depth per connection before a send would block. Generous: requests are bounded by the
# broker's in-flight limit, and outputs are coalesced by the worker.
HIGH_WATER_MARK = 100_000
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


# Plain ints for hot paths: pyzmq wraps its constants and getsockopt results in enums, whose
# arithmetic costs microseconds per message.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)
_MORE = NOBLOCK | SNDMORE

# pyzmq's compiled socket methods. ``Socket.send_multipart``/``recv_multipart`` are Python loops
# that add several microseconds per message (enum flags, keyword handling, RCVMORE lookups);
# every message of every request crosses three processes, so the hot paths call these directly.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def readable(sock: zmq.Socket) -> bool:
    """Whether a message can be received now (also processes the socket's pending commands)."""
    return bool(int(_get(sock, EVENTS)) & POLLIN)


def send_message(sock: zmq.Socket, frames: Sequence[Any]) -> None:
    """Send a multipart message without blocking; ``zmq.Again`` if the queue is full.

    Frames are sent without copying (small ones are copied by pyzmq, which is cheaper). ZeroMQ
    accepts all parts once the first one is queued, so a full queue never splits a message.
    """
    for frame in frames[:-1]:
        _send(sock, frame, _MORE, False)
    _send(sock, frames[-1], NOBLOCK, False)


def receive_message(sock: zmq.Socket) -> list[zmq.Frame]:
    """Receive one multipart message without blocking; ``zmq.Again`` if none is queued."""
    frame = _recv(sock, NOBLOCK, False)
    frames = [frame]
    while frame.more:
        frame = _recv(sock, NOBLOCK, False)
        frames.append(frame)
    return frames


def set_queue_limits(sock: zmq.Socket, depth: int = HIGH_WATER_MARK) -> None:
    sock.setsockopt(zmq.SNDHWM, depth)
    sock.setsockopt(zmq.RCVHWM, depth)


def set_heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_INTERVAL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def make_dealer(context: zmq.Context, server_public_key: str | None) -> zmq.Socket:
    """A DEALER for the broker, not connected yet (attach a monitor first, then connect);
    CurveZMQ encrypted when the broker's key is given."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    set_queue_limits(sock)
    set_heartbeats(sock)
    if server_public_key:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = _z85(server_public_key, "broker public key")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    return sock


def make_router(
    context: zmq.Context,
    bind_url: str,
    secret_key: bytes | None,
    max_frame_bytes: int,
    queue_depth: int = HIGH_WATER_MARK,
) -> zmq.Socket:
    """A ROUTER bound to ``bind_url``. Unroutable sends raise instead of vanishing."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    set_queue_limits(sock, queue_depth)
    set_heartbeats(sock)
    if secret_key:
        sock.curve_server = True
        sock.curve_secretkey = secret_key
    sock.bind(bind_url)
    return sock


def open_monitor(sock: zmq.Socket) -> zmq.Socket:
    return sock.get_monitor_socket(MONITOR_EVENTS)


def read_monitor_events(monitor: zmq.Socket) -> list[int]:
    """Drain pending monitor events without blocking; return their event numbers."""
    return [event for event, _ in read_monitor_values(monitor)]


def read_monitor_values(monitor: zmq.Socket) -> list[tuple[int, int]]:
    """Drain pending monitor events without blocking; return ``(event, value)`` pairs (the
    value of an accepted or disconnected connection is its file descriptor)."""
    events: list[tuple[int, int]] = []
    while True:
        try:
            message = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
        except zmq.Again:
            return events
        events.append((int(message["event"]), int(message["value"])))


_seeded = False


def seed_connection_ids() -> None:
    """Make the connection ids a ROUTER assigns unpredictable; call before creating one.

    libzmq numbers the connections of a ROUTER from a value drawn with the C library's
    ``rand()``, which it never seeds: every process starts at the same value. Knowing the next
    id lets a peer that picks that id for itself make libzmq abort (see
    ``rexec_broker.connections``). Seeding ``rand()`` from the operating system's random source
    takes that knowledge away.
    """
    global _seeded
    if _seeded:
        return
    libc = ctypes.CDLL(None)
    libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    _seeded = True


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (every connection is a file
    descriptor); return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


def _z85(key: str | bytes, what: str) -> bytes:
    data = key.encode() if isinstance(key, str) else key
    if len(data) != 40:
        raise ConfigError(f"the {what} must be a 40-character Z85 CurveZMQ key")
    return data


def is_loopback_url(url: str) -> bool:
    """True when a tcp:// URL names a loopback address (or is inproc/ipc)."""
    parts = urlsplit(url)
    if parts.scheme in ("inproc", "ipc"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_curve_keypair(directory: Path) -> tuple[str, Path]:
    """Write a broker keypair: ``broker.key`` (secret, 0600) and ``broker.pub``."""
    public, secret = zmq.curve_keypair()
    secret_path = directory / "broker.key"
    write_secret_file(secret_path, secret + b"\n")
    (directory / "broker.pub").write_bytes(public + b"\n")
    return public.decode(), secret_path


def load_curve_secret(path: Path) -> bytes:
    try:
        return _z85(path.read_bytes().strip(), f"CurveZMQ secret key in {path}")
    except OSError as exc:
        raise ConfigError(f"cannot read the CurveZMQ secret key {path}: {exc.strerror}") from exc


class Waker:
    """A self-pipe other threads write to so a poll loop wakes up."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake: the pipe holds unread bytes

    def drain(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
