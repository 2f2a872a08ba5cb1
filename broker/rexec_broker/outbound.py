"""What the broker sends: to either router, in order per connection, never blocking the loop.

A peer that reads slower than it is sent to fills its pipe. Its messages then wait in a backlog
that the loop retries (``flush``), rather than being dropped (a dropped reply would leave a caller
waiting) or blocking every other user; a peer whose backlog reaches ``MAX_BACKLOG_MESSAGES`` is
dropped as not reading.

While the loop handles a burst of messages it corks this outbox (``hold``): what the burst sends
leaves in batches of ``CORK_BATCH``, so ZeroMQ wakes its I/O thread once per batch rather than once
per message. The batches are small, so workers start on the first requests early.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from typing import Any

import zmq

from rexec.transport import send_message

MAX_BACKLOG_MESSAGES = 100_000
CORK_BATCH = 16

# (to a client?, routing id): a connection on one of the two routers.
PeerKey = tuple[bool, bytes]
# Called with a connection that is gone, or not reading, and why; the owner forgets it.
PeerGone = Callable[[PeerKey, str], None]


class Outbound:
    """Sends for the broker's loop, the only thread that uses the routers."""

    def __init__(
        self,
        frontend: zmq.Socket,
        backend: zmq.Socket,
        on_gone: PeerGone,
        stats: collections.Counter[str],
    ) -> None:
        self._frontend = frontend
        self._backend = backend
        self._on_gone = on_gone
        self._stats = stats
        # Messages (routing id first) waiting for a full queue, by connection. The dict is never
        # replaced, so the loop may hold on to it.
        self.backlogs: dict[PeerKey, collections.deque[list[Any]]] = {}
        # While a burst is handled: what it sends, held until the batch is full or it ends.
        self._corked: list[tuple[bool, bytes, list[Any]]] | None = None

    def send(self, to_client: bool, rid: bytes, message: list[Any]) -> bool:
        """Send ``message`` (routing id ``rid`` first) to one connection, in order; False only
        when the connection is gone (the owner was told)."""
        if self._corked is not None:
            self._corked.append((to_client, rid, message))
            return True
        backlogs = self.backlogs
        if backlogs:
            backlog = backlogs.get((to_client, rid))
            if backlog is not None:
                if len(backlog) >= MAX_BACKLOG_MESSAGES:
                    self._gone((to_client, rid), "it stopped reading its messages")
                    return False
                backlog.append(message)
                return True
        try:
            send_message(self._frontend if to_client else self._backend, message)
        except zmq.Again:
            self._stats["backlogged"] += 1
            backlogs[(to_client, rid)] = collections.deque([message])
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._gone((to_client, rid), "its connection closed")
            return False
        return True

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
            for to_client, rid, message in held:
                self.send(to_client, rid, message)

    def flush(self) -> None:
        """Retry the backlogs, as far as the queues take them."""
        for key, backlog in list(self.backlogs.items()):
            sock = self._frontend if key[0] else self._backend
            while backlog:
                try:
                    send_message(sock, backlog[0])
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EHOSTUNREACH:
                        raise
                    self._gone(key, "its connection closed")
                    break
                backlog.popleft()
            if not backlog:
                self.backlogs.pop(key, None)

    def forget(self, key: PeerKey) -> None:
        """Drop whatever still waits for a connection that is gone."""
        self.backlogs.pop(key, None)

    def _gone(self, key: PeerKey, reason: str) -> None:
        self.backlogs.pop(key, None)
        self._on_gone(key, reason)
