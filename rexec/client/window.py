"""The requests a session has open, within the broker's in-flight limit.

The broker refuses more than ``limit`` requests in flight on one connection. A session keeps
those beyond it here, in order, and releases each when an earlier one finishes, so a burst of
``submit()`` calls waits on the client instead of being refused.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

import zmq

from rexec import protocol as p

Delivery = Callable[["Pending", dict[str, Any], list[zmq.Frame]], None]
# A request and its frames, released to be sent.
Release = tuple["Pending", list[Any]]


class Pending:
    """A request waiting for its messages: queued for a waiting thread, or given to a callback
    on the I/O thread (futures from ``submit``)."""

    def __init__(self, request_id: str, callback: Delivery | None = None) -> None:
        self.id = request_id
        self.callback = callback
        self.sent = False  # False while it waits for room in the in-flight window
        self.events: queue.SimpleQueue[tuple[dict[str, Any], list[zmq.Frame]]] = queue.SimpleQueue()

    def deliver(self, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        if self.callback is not None:
            self.callback(self, header, payload)
        else:
            self.events.put((header, payload))


class RequestWindow:
    """Open requests by id: those sent (at most ``limit``) and those waiting for room."""

    def __init__(self, limit: int = p.MAX_INFLIGHT_PER_CLIENT) -> None:
        self.limit = limit
        # Every request not finished yet. Read without the lock where one dict read suffices
        # (the I/O thread looks up each message's request here).
        self.open: dict[str, Pending] = {}
        self._in_flight = 0
        self._waiting: collections.deque[Release] = collections.deque()
        self._lock = threading.Lock()

    def add(self, pending: Pending, frames: list[Any]) -> bool:
        """Open a request; True when it may be sent now, False when it waits for room."""
        with self._lock:
            self.open[pending.id] = pending
            if self._in_flight >= self.limit or self._waiting:
                self._waiting.append((pending, frames))
                return False
            pending.sent = True
            self._in_flight += 1
            return True

    def finish(self, pending: Pending) -> list[Release]:
        """Close a request (again is harmless); return the waiting ones that now have room,
        marked sent: the caller sends them, in order."""
        release: list[Release] = []
        with self._lock:
            if self.open.pop(pending.id, None) is not None:
                if pending.sent:
                    self._in_flight -= 1
                else:
                    self._drop_waiting(pending)
            while self._waiting and self._in_flight < self.limit:
                waiting, frames = self._waiting.popleft()
                waiting.sent = True
                self._in_flight += 1
                release.append((waiting, frames))
        return release

    def withdraw_waiting(self, pending: Pending) -> bool:
        """Take back a request still waiting for room; True if it never was sent."""
        with self._lock:
            return not pending.sent and self._drop_waiting(pending)

    def snapshot(self) -> list[Pending]:
        with self._lock:
            return list(self.open.values())

    def others_open(self) -> bool:
        """Whether a request other than the caller's own is open (so replies arrive that no
        waiting caller reads)."""
        return len(self.open) > 1

    def _drop_waiting(self, pending: Pending) -> bool:
        for index, (waiting, _) in enumerate(self._waiting):
            if waiting is pending:
                del self._waiting[index]
                return True
        return False
