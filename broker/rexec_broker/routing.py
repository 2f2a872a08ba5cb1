"""The broker's routing table: who is connected, as whom, and which requests are in flight.

Pure data and rules, no sockets. Every identity here was established by the broker itself: a
client's user comes from its validated token, a worker's user from its verified credential, and
connection ids are the ones ZeroMQ assigned. Nothing taken from a message body is trusted for
routing: a worker's response is forwarded only if this very worker was sent that request by that
very client.

Workers never see connection ids. Each client connection gets a random *route tag*, which the
broker puts on every message it forwards to a worker and the worker echoes back; the table maps
tags back to connections. Connection ids are numbered by libzmq, and knowing them helps a peer
attack the broker (see ``rexec_broker.connections``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from rexec import protocol as p

WorkerKey = tuple[str, str]  # (user, worker name)
Running = tuple[bytes, bytes, str]  # (worker connection id, route tag, request id)
RequestKey = tuple[bytes, str]  # (client connection id, request id)
TAG_BYTES = 8


def make_route_tag() -> bytes:
    return os.urandom(TAG_BYTES)


@dataclass
class ClientConn:
    rid: bytes
    user: str
    groups: tuple[str, ...]
    worker: str
    token: str = field(repr=False)
    validated_at: float
    inflight: set[str] = field(default_factory=set)
    revalidating: bool = False
    # What the worker sees instead of ``rid`` (see the module docstring).
    tag: bytes = field(default_factory=make_route_tag, repr=False)
    # (user, worker name), built once: it is looked up on every request.
    worker_key: WorkerKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.worker_key = (self.user, self.worker)


@dataclass
class WorkerConn:
    rid: bytes
    user: str
    name: str
    info: dict[str, Any]
    registered_at: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)
    # From its credential: which worker the spawner started, when it signed, until when.
    instance: str = ""
    issued_at: float = 0.0
    expires_at: float | None = None
    # When the broker last got any message from it (monotonic seconds).
    last_heard: float = field(default_factory=time.monotonic)
    inflight: set[RequestKey] = field(default_factory=set)
    # (user, worker name), built once: it is looked up on every request and reply.
    key: WorkerKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = (self.user, self.name)


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


class RoutingTable:
    def __init__(self, max_in_flight: int = p.MAX_INFLIGHT_PER_CLIENT) -> None:
        self.max_in_flight = max_in_flight  # requests per client connection
        self.clients: dict[bytes, ClientConn] = {}
        self.workers: dict[bytes, WorkerConn] = {}
        self.worker_by_key: dict[WorkerKey, bytes] = {}
        self.clients_by_key: dict[WorkerKey, set[bytes]] = {}
        self.inflight: dict[RequestKey, bytes] = {}
        self.by_tag: dict[bytes, bytes] = {}  # route tag -> client connection id

    # -- clients ---------------------------------------------------------------------------

    def add_client(self, conn: ClientConn) -> list[Running]:
        """Bind a connection to a user; a re-hello on the same connection replaces the old one."""
        orphaned = self.remove_client(conn.rid) if conn.rid in self.clients else []
        while conn.tag in self.by_tag:  # 2**64 tags: practically never
            conn.tag = make_route_tag()
        self.clients[conn.rid] = conn
        self.by_tag[conn.tag] = conn.rid
        self.clients_by_key.setdefault(conn.worker_key, set()).add(conn.rid)
        return orphaned

    def remove_client(self, rid: bytes) -> list[Running]:
        """Forget a client; return (worker rid, route tag, request id) of its requests still
        running, for cancelling them."""
        conn = self.clients.pop(rid, None)
        if conn is None:
            return []
        if self.by_tag.get(conn.tag) == rid:
            del self.by_tag[conn.tag]
        peers = self.clients_by_key.get(conn.worker_key)
        if peers is not None:
            peers.discard(rid)
            if not peers:
                del self.clients_by_key[conn.worker_key]
        running = []
        for request_id in conn.inflight:
            worker_rid = self.inflight.pop((rid, request_id), None)
            if worker_rid is not None:
                running.append((worker_rid, conn.tag, request_id))
                worker = self.workers.get(worker_rid)
                if worker is not None:
                    worker.inflight.discard((rid, request_id))
        return running

    def worker_for(self, client: ClientConn) -> WorkerConn | None:
        rid = self.worker_by_key.get(client.worker_key)
        return None if rid is None else self.workers.get(rid)

    # -- workers ---------------------------------------------------------------------------

    def register_worker(self, conn: WorkerConn) -> WorkerConn | None:
        """Register a worker; return the connection it replaces for the same user and name."""
        replaced = None
        old_rid = self.worker_by_key.get(conn.key)
        if old_rid is not None and old_rid != conn.rid:
            replaced = self.workers.get(old_rid)
        current = self.workers.get(conn.rid)
        if current is not None:  # registered again on the same connection (a renewal)
            current.info = conn.info
            current.instance, current.issued_at = conn.instance, conn.issued_at
            current.expires_at = conn.expires_at
            return replaced
        self.workers[conn.rid] = conn
        self.worker_by_key[conn.key] = conn.rid
        return replaced

    def remove_worker(self, rid: bytes) -> tuple[WorkerConn | None, list[RequestKey]]:
        """Forget a worker; return it and the (client rid, request id) of its lost requests."""
        conn = self.workers.pop(rid, None)
        if conn is None:
            return None, []
        if self.worker_by_key.get(conn.key) == rid:
            del self.worker_by_key[conn.key]
        lost = sorted(conn.inflight)
        for key in lost:
            self.inflight.pop(key, None)
            client = self.clients.get(key[0])
            if client is not None:
                client.inflight.discard(key[1])
        conn.inflight.clear()
        return conn, lost

    # -- requests --------------------------------------------------------------------------

    def start_request(self, client_rid: bytes, request_id: str) -> WorkerConn | Refusal:
        """Record a new request of an authenticated client and pick its user's worker."""
        client = self.clients.get(client_rid)
        if client is None:
            return Refusal(p.E_UNAUTHENTICATED, "say hello with a token before sending requests")
        inflight = client.inflight
        if request_id in inflight:
            return Refusal(p.E_BAD_MESSAGE, f"request id {request_id!r} is already in flight")
        if len(inflight) >= self.max_in_flight:
            return Refusal(
                p.E_BUSY, "too many requests in flight on this connection; wait for some"
            )
        worker_rid = self.worker_by_key.get(client.worker_key)
        worker = None if worker_rid is None else self.workers.get(worker_rid)
        if worker is None:
            return Refusal(
                p.E_NO_WORKER,
                f"no worker named {client.worker!r} is registered for user {client.user!r}; "
                "ask the spawner to start one",
            )
        inflight.add(request_id)
        key = (client_rid, request_id)
        worker.inflight.add(key)
        self.inflight[key] = worker.rid
        return worker

    def followup_target(self, client_rid: bytes, request_id: str) -> bytes | None:
        """The worker of a request this client has in flight (for next/cancel), else None."""
        return self.inflight.get((client_rid, request_id))

    def route_response(self, worker_rid: bytes, tag: bytes, request_id: str) -> bytes | None:
        """The client connection a worker message with route tag ``tag`` may go to, or None if
        this worker has no such request.

        A terminal reply also needs ``finish_request``; the broker calls it after forwarding.
        """
        rid = self.by_tag.get(tag)
        if rid is None or self.inflight.get((rid, request_id)) != worker_rid:
            return None
        return rid

    def finish_request(self, key: RequestKey) -> None:
        worker_rid = self.inflight.pop(key, None)
        client = self.clients.get(key[0])
        if client is not None:
            client.inflight.discard(key[1])
        worker = self.workers.get(worker_rid) if worker_rid is not None else None
        if worker is not None:
            worker.inflight.discard(key)
