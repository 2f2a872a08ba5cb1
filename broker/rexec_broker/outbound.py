"""What the broker sends: to either router, in order per connection, never blocking the loop,
and never more than a bounded number of bytes ahead of what the peer has read.

**Windows.** Every peer tells the broker how many bytes of its messages it has read and is done
with (``credit``, cumulative, each quarter window). The broker sends a peer at most ``window``
bytes beyond that, and all peers together at most ``total_window`` bytes beyond theirs; one
message always goes when less than a quarter window is outstanding, whatever its size. So
libzmq's queues for a peer that stops reading hold at most a window (and one message), and the
peer's own buffers too.

**Held messages.** What may not be sent yet waits here, in order, counted in bytes. When a peer's
held bytes pass ``pause_at`` the owner is told (``pause``: the broker then asks the workers that
produce for it to pause), and again once it caught up (``resume``). A peer holding more than one
message and over ``overflow_at`` bytes, or the peer holding the most when all together hold more
than ``max_held``, is reported ``overflow``: the owner drops what it can lose (output) with
``drop``. A single message, however large, always waits: it is the one being read. A peer that
has held messages and has not reported reading anything for ``stall_after`` seconds is
``stalled`` (the owner asks for them in its sweep) and is not reading at all.

**Full queues.** A send that finds libzmq's queue full (its high-water mark, in messages) keeps the
message in the same held queue; the loop retries (``flush``) while ``backlogs`` is not empty. A
send to a connection that is gone tells the owner (``on_gone``), which forgets it.

While the loop handles a burst of messages it corks this outbox (``hold``): what the burst sends
leaves in batches of ``CORK_BATCH``, so ZeroMQ wakes its I/O thread once per batch rather than once
per message. The batches are small, so workers start on the first requests early.
"""

from __future__ import annotations

import collections
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from rexec.transport import send_message

CORK_BATCH = 16
MiB = 1024 * 1024

# (to a client?, routing id): a connection on one of the two routers.
PeerKey = tuple[bool, bytes]
# Called with a connection that is gone, and why; the owner forgets it.
PeerGone = Callable[[PeerKey, str], None]
# Called with a connection whose held bytes crossed a threshold: "pause", "resume", "overflow".
Pressure = Callable[[PeerKey, str], None]


@dataclass(frozen=True)
class FlowLimits:
    """Byte bounds of what the broker sends and keeps (see the module docstring)."""

    window: int = 16 * MiB
    total_window: int = 256 * MiB
    pause_at: int = 8 * MiB
    resume_at: int = 2 * MiB
    overflow_at: int = 64 * MiB
    max_held: int = 256 * MiB
    stall_after: float = 60.0

    def check(self) -> None:
        from rexec.errors import ConfigError

        if not 0 < self.resume_at < self.pause_at < self.overflow_at <= self.max_held:
            raise ConfigError(
                "flow limits must keep 0 < resume_at < pause_at < overflow_at <= max_held"
            )
        if self.window < 64 * 1024 or self.total_window < self.window:
            raise ConfigError("the send window must be at least 64 KiB and fit the total window")


@dataclass
class _Peer:
    sent: int = 0  # bytes handed to libzmq for this peer
    acked: int = 0  # bytes the peer says it has read
    held: collections.deque[tuple[list[Any], int]] = field(default_factory=collections.deque)
    held_bytes: int = 0
    paused: bool = False  # told the owner "pause" and not "resume" yet
    # When it last reported reading, or when messages started to wait for it (monotonic).
    progress_at: float = field(default_factory=time.monotonic)


def message_bytes(message: list[Any]) -> int:
    """What a peer counts of ``message``: every frame after the routing id."""
    total = 0
    for frame in message[1:]:
        total += len(frame)
    return total


class Outbound:
    """Sends for the broker's loop, the only thread that uses the routers."""

    def __init__(
        self,
        frontend: zmq.Socket,
        backend: zmq.Socket,
        on_gone: PeerGone,
        stats: collections.Counter[str],
        limits: FlowLimits | None = None,
        on_pressure: Pressure | None = None,
    ) -> None:
        self._frontend = frontend
        self._backend = backend
        self._on_gone = on_gone
        self._on_pressure = on_pressure or (lambda key, level: None)
        self._stats = stats
        self.limits = limits or FlowLimits()
        self._peers: dict[PeerKey, _Peer] = {}
        # Peers whose held messages could leave now (libzmq's queue was full, or a window
        # reopened). Never replaced, so the loop may hold on to it and test it every turn.
        self.backlogs: dict[PeerKey, _Peer] = {}
        self.in_flight = 0  # bytes sent to all peers and not acknowledged yet
        self.held_bytes = 0  # bytes held for all peers
        # While a burst is handled: what it sends, held until the batch is full or it ends.
        self._corked: list[tuple[PeerKey, list[Any], int]] | None = None

    def send(self, to_client: bool, rid: bytes, message: list[Any], size: int = -1) -> bool:
        """Send ``message`` (routing id ``rid`` first; ``size``: its ``message_bytes`` if
        known) to one connection, in order; False only when the connection is gone (the owner
        was told)."""
        key = (to_client, rid)
        if size < 0:
            size = message_bytes(message)
        if self._corked is not None:
            self._corked.append((key, message, size))
            return True
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = _Peer()
        if peer.held:
            self._hold(key, peer, message, size)
            return True
        if self._must_wait(peer, size):
            self._hold(key, peer, message, size)
            return True
        return self._send_now(key, peer, message, size)

    def credit(self, key: PeerKey, acked: int) -> None:
        """The peer has read ``acked`` bytes in all: its window moves on."""
        peer = self._peers.get(key)
        if peer is None or acked <= peer.acked:
            return
        acked = min(acked, peer.sent)  # a peer never reads more than it was sent
        self.in_flight -= acked - peer.acked
        peer.acked = acked
        peer.progress_at = time.monotonic()
        if peer.held:
            self.backlogs[key] = peer
        elif peer.paused:  # it caught up with what was held (or that was dropped)
            peer.paused = False
            self._on_pressure(key, "resume")
        if self.held_bytes:  # room in the total window may let other peers go on too
            for other_key, other in self._peers.items():
                if other.held:
                    self.backlogs[other_key] = other

    def hold(self) -> None:
        """More messages are queued behind the one just handled: hold what they send, and let
        a full batch leave."""
        corked = self._corked
        if corked is None:
            self._corked = []
        elif len(corked) >= CORK_BATCH:
            self.release()
            self._corked = []

    def release(self) -> None:
        """Send what ``hold`` kept back; later sends leave at once."""
        held, self._corked = self._corked, None
        if held:
            for key, message, size in held:
                self.send(key[0], key[1], message, size)

    def flush(self) -> None:
        """Send held messages, as far as libzmq's queues and the windows let them."""
        for key, peer in list(self.backlogs.items()):
            if self._flush_peer(key, peer):
                self.backlogs.pop(key, None)

    def held_for(self, key: PeerKey) -> int:
        peer = self._peers.get(key)
        return peer.held_bytes if peer is not None else 0

    def crowded(self, key: PeerKey) -> bool:
        """Whether more should not be queued for this peer now: it holds several messages and
        over ``overflow_at`` bytes, or all peers together hold over ``max_held``."""
        peer = self._peers.get(key)
        if self.held_bytes > self.limits.max_held:
            return True
        return peer is not None and len(peer.held) > 1 and peer.held_bytes > self.limits.overflow_at

    def stalled(self) -> list[PeerKey]:
        """Peers with messages held for ``stall_after`` seconds without reading any."""
        deadline = time.monotonic() - self.limits.stall_after
        return [
            key for key, peer in self._peers.items() if peer.held and peer.progress_at < deadline
        ]

    def drop(self, key: PeerKey) -> list[list[Any]]:
        """Discard what is held for a peer (it overflowed); return the messages."""
        peer = self._peers.get(key)
        if peer is None:
            return []
        dropped = [message for message, _ in peer.held]
        self.held_bytes -= peer.held_bytes
        peer.held.clear()
        peer.held_bytes = 0
        self.backlogs.pop(key, None)
        return dropped  # still paused: resumed once the peer reads again (see ``credit``)

    def forget(self, key: PeerKey) -> None:
        """Drop what still waits for a connection that is gone, and its window."""
        peer = self._peers.pop(key, None)
        if peer is None:
            return
        self.in_flight -= peer.sent - peer.acked
        self.held_bytes -= peer.held_bytes
        self.backlogs.pop(key, None)

    # -- internals -------------------------------------------------------------------------

    def _must_wait(self, peer: _Peer, size: int) -> bool:
        """Whether a message of ``size`` bytes would take the peer beyond its window (or all
        peers beyond theirs). Peers report every quarter window, so less than that may stay
        unreported for good: it counts as nothing outstanding, and then one message goes
        whatever its size."""
        outstanding = peer.sent - peer.acked
        if outstanding < self.limits.window // 4:
            return False
        return (
            outstanding + size > self.limits.window
            or self.in_flight + size > self.limits.total_window
        )

    def _send_now(self, key: PeerKey, peer: _Peer, message: list[Any], size: int) -> bool:
        try:
            send_message(self._frontend if key[0] else self._backend, message)
        except zmq.Again:  # libzmq's queue is full: keep it, and retry soon
            self._stats["backlogged"] += 1
            self._hold(key, peer, message, size)
            self.backlogs[key] = peer
            return True
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._gone(key, "its connection closed")
            return False
        peer.sent += size
        self.in_flight += size
        return True

    def _hold(self, key: PeerKey, peer: _Peer, message: list[Any], size: int) -> None:
        if not peer.held:
            peer.progress_at = time.monotonic()  # the wait starts now
        peer.held.append((message, size))
        peer.held_bytes += size
        self.held_bytes += size
        limits = self.limits
        over = len(peer.held) > 1 and peer.held_bytes > limits.overflow_at
        if not over and self.held_bytes > limits.max_held:
            worst_key = max(self._peers, key=lambda k: self._peers[k].held_bytes)
            worst = self._peers[worst_key]
            if len(worst.held) > 1:
                key, over = worst_key, True
        if over:
            self._stats["overflowed"] += 1
            self._on_pressure(key, "overflow")
        elif not peer.paused and peer.held_bytes > limits.pause_at:
            peer.paused = True
            self._stats["paused"] += 1
            self._on_pressure(key, "pause")

    def _flush_peer(self, key: PeerKey, peer: _Peer) -> bool:
        """Send what the peer's window allows; True when nothing is left to retry now."""
        sock = self._frontend if key[0] else self._backend
        limits = self.limits
        while peer.held:
            message, size = peer.held[0]
            if self._must_wait(peer, size):
                return True  # waits for credit, not for the loop
            try:
                send_message(sock, message)
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self._gone(key, "its connection closed")
                return True
            peer.held.popleft()
            peer.held_bytes -= size
            self.held_bytes -= size
            peer.sent += size
            self.in_flight += size
            if peer.paused and peer.held_bytes < limits.resume_at:
                peer.paused = False
                self._on_pressure(key, "resume")
        return True

    def _gone(self, key: PeerKey, reason: str) -> None:
        self.forget(key)
        self._on_gone(key, reason)
