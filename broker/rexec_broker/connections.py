"""Connection admission for one of the broker's routers: who may hold a connection, and how long
without authenticating.

Why this exists. A ZeroMQ ROUTER (libzmq 4.3) lets a peer choose its own routing id, and numbers
the connections that do not as ``0x00`` + a 32-bit counter. When the counter reaches an id a peer
chose and still holds, libzmq aborts the whole process; no socket option refuses chosen ids, and
the counter starts at the same value in every process unless the C library's random generator is
seeded (``rexec.transport.seed_connection_ids``). Rexec peers never choose ids, so the broker:

* seeds that counter from the operating system's random source, so its value cannot be predicted,
  and never reveals connection ids (workers see opaque route tags, see ``routing``);
* disconnects a peer the moment a message shows an id that libzmq cannot have assigned, and refuses
  new connections from its address for a while (``ban_seconds``);
* bounds what an unauthenticated peer may hold: connections per address and in all, new
  connections per second per address and in all, seconds until its first message
  (``speak_within``) and until a hello (or a worker's register) was accepted (``greet_within``).
  A peer that says nothing, or only nonsense, is disconnected by then.

What remains is a guess: a peer that keeps a chosen id silent hopes the counter reaches it before
``speak_within`` ends; with the counter unknown that succeeds with odds of about one in 2**32 per
id held and connection the counter passes meanwhile, and the limits bound both.
``docs/security.md`` gives the numbers.

The broker's loop tells this class what it sees (connections accepted and closed, from the
router's socket monitor; each connection's first message; authentications) and it answers by
shutting down the TCP connections it refuses. File descriptors come from the monitor and from
the ``SRCFD`` property of received frames; before shutting one down, the peer address is checked
again, so a descriptor number the kernel has since reused for another connection is never hit.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

log = logging.getLogger("rexec.broker")

# How libzmq names the connections whose peer did not choose an id: a zero byte and 4 bytes.
AUTOMATIC_ID_LENGTH = 5
MAX_TRACKED_ADDRESSES = 65_536
LOCAL = "local"  # the address of Unix-socket (ipc://) peers
ALL = "*"  # the bucket of new connections from every address


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on unauthenticated connections, per router. See the module docstring."""

    per_address: int = 128
    total: int = 4096
    rate: float = 64.0
    burst: int = 512
    # New connections per second from all addresses together, after a burst of total_burst.
    total_rate: float = 1024.0
    total_burst: int = 4096
    # A connection must have sent its first message this soon after it was accepted (the
    # handshake included) ...
    speak_within: float = 3.0
    # ... and be authenticated this soon (an identity provider check included).
    greet_within: float = 10.0
    ban_seconds: float = 60.0

    def check(self) -> None:
        from rexec.errors import ConfigError

        if min(self.per_address, self.total, self.burst, self.total_burst) < 1:
            raise ConfigError("connection limits must be at least 1")
        if min(self.rate, self.total_rate, self.speak_within, self.greet_within) <= 0:
            raise ConfigError("connection rates and deadlines must be positive numbers")
        if self.ban_seconds < 0:
            raise ConfigError("the ban must be 0 (none) or a number of seconds")


@dataclass
class _Connection:
    peer: tuple[Any, ...] | str  # what getpeername() returned when it was accepted
    address: str
    accepted_at: float
    rid: bytes | None = None
    authenticated: bool = False


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class GuardStats:
    refused: collections.Counter[str] = field(default_factory=collections.Counter)


def automatic_id(rid: bytes) -> bool:
    """Whether libzmq can have assigned ``rid`` itself (a peer may still have chosen it)."""
    return len(rid) == AUTOMATIC_ID_LENGTH and rid[0] == 0


def shutdown_connection(fd: int, expected_peer: tuple[Any, ...] | str) -> bool:
    """Shut down the TCP connection on ``fd`` if it still leads to ``expected_peer``.

    The descriptor belongs to libzmq: it is duplicated, shut down (which ends the connection for
    every descriptor of it) and the duplicate closed; libzmq then sees the connection end.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        if _peer_of(sock) != expected_peer:
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def peer_of_fd(fd: int) -> tuple[Any, ...] | str | None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        return _peer_of(sock)
    except OSError:
        return None
    finally:
        sock.close()


def _peer_of(sock: socket.socket) -> tuple[Any, ...] | str:
    peer = sock.getpeername()
    return tuple(peer) if isinstance(peer, tuple | list) else str(peer)


def _address(peer: tuple[Any, ...] | str) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else LOCAL


class ConnectionGuard:
    """Admission of the connections of one router (see the module docstring).

    ``known`` holds the routing ids whose first message was seen and allowed; the loop checks it
    before every message and calls ``first_message`` for ids not in it.
    """

    def __init__(
        self,
        side: str,
        limits: ConnectionLimits,
        shutdown: Callable[[int, tuple[Any, ...] | str], bool] = shutdown_connection,
        peer_of: Callable[[int], tuple[Any, ...] | str | None] = peer_of_fd,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.side = side
        self.limits = limits
        self.known: set[bytes] = set()
        self.stats = GuardStats()
        self._shutdown = shutdown
        self._peer_of = peer_of
        self._clock = clock
        self._connections: dict[int, _Connection] = {}
        self._fd_of: dict[bytes, int] = {}
        self._unauthenticated: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._total_bucket = _Bucket(float(limits.total_burst), clock())
        self._banned: dict[str, float] = {}

    # -- what the socket monitor reports ---------------------------------------------------

    def accepted(self, fd: int) -> None:
        """A TCP connection was accepted on ``fd`` (its handshake has not happened yet)."""
        peer = self._peer_of(fd)
        if peer is None:
            return  # already gone
        existing = self._connections.get(fd)
        if existing is not None and existing.peer == peer:
            return  # its first message came before this report, and adopted it
        now = self._clock()
        address = _address(peer)
        refusal = self._refusal(address, now)
        if refusal is not None:
            self.stats.refused[refusal] += 1
            self._shutdown(fd, peer)
            return
        self._forget_fd(fd)  # a descriptor number the kernel reused
        self._connections[fd] = _Connection(peer, address, now)
        self._unauthenticated[address] += 1

    def disconnected(self, fd: int) -> None:
        self._forget_fd(fd)

    # -- what the loop sees ----------------------------------------------------------------

    def first_message(self, rid: bytes, frame: zmq.Frame) -> bool:
        """The first message of connection ``rid`` arrived (``frame``: any of its frames).
        True if its messages may be handled; False if the connection is being shut down."""
        fd = _source_fd(frame)
        connection = self._connections.get(fd) if fd >= 0 else None
        if connection is None and fd >= 0:
            connection = self._adopt(fd)
        if not automatic_id(rid):
            self.stats.refused["chosen_id"] += 1
            if connection is not None:
                log.warning(
                    "a peer at %s on the %s port chose its own connection id; disconnected it "
                    "and refuse its address for %g s",
                    connection.address,
                    self.side,
                    self.limits.ban_seconds,
                )
                self._ban(connection.address)
                self._close(fd, connection)
            return False
        if connection is not None:
            if connection.rid is not None and connection.rid != rid:
                self._fd_of.pop(connection.rid, None)
            connection.rid = rid
            self._fd_of[rid] = fd
        self.known.add(rid)
        return True

    def authenticated(self, rid: bytes) -> None:
        """Connection ``rid`` was admitted (a valid hello, or a worker's register)."""
        connection = self._connection_of(rid)
        if connection is not None and not connection.authenticated:
            connection.authenticated = True
            self._count_out(connection)

    def unauthenticated(self, rid: bytes) -> None:
        """Connection ``rid`` lost its session (revoked, replaced): it must greet again in time."""
        connection = self._connection_of(rid)
        if connection is not None and connection.authenticated:
            connection.authenticated = False
            connection.accepted_at = self._clock()
            self._unauthenticated[connection.address] += 1

    def sweep(self) -> int:
        """Disconnect connections that did not speak or authenticate in time; return how
        many."""
        now = self._clock()
        greet_deadline = now - self.limits.greet_within
        speak_deadline = now - self.limits.speak_within
        late = []
        for fd, connection in self._connections.items():
            if connection.authenticated:
                continue
            if connection.accepted_at < greet_deadline:
                late.append((fd, connection, "greet_timeout"))
            elif connection.rid is None and connection.accepted_at < speak_deadline:
                late.append((fd, connection, "silent"))
        for fd, connection, reason in late:
            self.stats.refused[reason] += 1
            self._close(fd, connection)
        for address in [a for a, until in self._banned.items() if until <= now]:
            del self._banned[address]
        if len(self._buckets) > MAX_TRACKED_ADDRESSES // 2:
            rate, burst = self.limits.rate, self.limits.burst
            full = [
                a for a, b in self._buckets.items() if self._refill(b, now, rate, burst) >= burst
            ]
            for address in full:
                del self._buckets[address]
        return len(late)

    @property
    def waiting(self) -> int:
        """Connections not authenticated yet."""
        return sum(self._unauthenticated.values())

    # -- internals -------------------------------------------------------------------------

    def _refusal(self, address: str, now: float) -> str | None:
        if address != LOCAL:  # Unix sockets: one "address"; file permissions guard them
            until = self._banned.get(address)
            if until is not None and until > now:
                return "banned"
            if not self._take_token(address, now, self.limits.rate, self.limits.burst):
                return "rate"
            if self._unauthenticated[address] >= self.limits.per_address:
                return "per_address"
        if self.waiting >= self.limits.total:
            return "total"
        if not self._take_token(ALL, now, self.limits.total_rate, self.limits.total_burst):
            return "total_rate"
        return None

    def _take_token(self, address: str, now: float, rate: float, burst: int) -> bool:
        bucket = self._total_bucket if address == ALL else self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[address] = _Bucket(float(burst), now)
        tokens = self._refill(bucket, now, rate, burst)
        if tokens < 1.0:
            return False
        bucket.tokens = tokens - 1.0
        return True

    def _refill(self, bucket: _Bucket, now: float, rate: float, burst: int) -> float:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket.tokens

    def _ban(self, address: str) -> None:
        if self.limits.ban_seconds > 0 and address != LOCAL:
            if len(self._banned) >= MAX_TRACKED_ADDRESSES:
                self._banned.pop(next(iter(self._banned)))
            self._banned[address] = self._clock() + self.limits.ban_seconds

    def _adopt(self, fd: int) -> _Connection | None:
        """A connection whose accept the monitor did not report (its queue overflowed)."""
        peer = self._peer_of(fd)
        if peer is None:
            return None
        connection = _Connection(peer, _address(peer), self._clock())
        self._connections[fd] = connection
        self._unauthenticated[connection.address] += 1
        return connection

    def _connection_of(self, rid: bytes) -> _Connection | None:
        fd = self._fd_of.get(rid)
        return None if fd is None else self._connections.get(fd)

    def _close(self, fd: int, connection: _Connection) -> None:
        self._shutdown(fd, connection.peer)
        self._forget_fd(fd)

    def _forget_fd(self, fd: int) -> None:
        connection = self._connections.pop(fd, None)
        if connection is None:
            return
        if not connection.authenticated:
            self._count_out(connection)
        if connection.rid is not None:
            if self._fd_of.get(connection.rid) == fd:
                del self._fd_of[connection.rid]
            self.known.discard(connection.rid)

    def _count_out(self, connection: _Connection) -> None:
        left = self._unauthenticated[connection.address] - 1
        if left > 0:
            self._unauthenticated[connection.address] = left
        else:
            del self._unauthenticated[connection.address]


def peer_address(frame: zmq.Frame) -> str:
    """The IP address a received frame came from ("local" for Unix sockets and inproc)."""
    try:
        return str(frame.get("Peer-Address")) or LOCAL
    except (zmq.ZMQError, TypeError, ValueError):
        return LOCAL


def _source_fd(frame: zmq.Frame) -> int:
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, TypeError, ValueError):
        return -1
