"""The broker's socket loop: a ROUTER for clients, a ROUTER for workers, one thread.

The loop never blocks on anything but ``epoll``. Token validation that misses the cache runs on a
thread pool (``rexec_broker.admission``) and its decision comes back through a self-pipe. Payload
frames are forwarded as received (zero-copy) and never deserialized; only the bounded header frame
is parsed.

Every request and every reply crosses this loop, so its hot paths are written for CPU cost:
pyzmq's compiled send/receive (through ``rexec.transport``) instead of its multipart helpers,
and ``epoll`` over raw file descriptors instead of ``zmq.Poller``.

Nothing one peer sends can end the loop: a message that makes a handler fail is logged and
dropped, and so is a failure in any other step of a turn. Which connections may stay, and for how
long without authenticating, is decided per router by ``rexec_broker.connections``.

Dead peers are found without trusting app-level heartbeats (a busy worker may hold its GIL for
minutes): libzmq's ZMTP heartbeats close dead connections, the socket monitors report the close,
and the broker then probes its peers with ROUTER_MANDATORY sends, which fail for connections that
no longer exist.
"""

from __future__ import annotations

import collections
import logging
import select
import time
from typing import Any

import zmq

from rexec import protocol as p
from rexec.auth import CachingValidator
from rexec.credentials import verify_worker_credential
from rexec.errors import AuthError, ProtocolError
from rexec.transport import (
    Waker,
    load_curve_secret,
    make_router,
    read_monitor_values,
    readable,
    receive_message,
    seed_connection_ids,
)
from rexec_broker.activity import ActivityTracker, answer_activity
from rexec_broker.admission import Admission, Admitted, Decision, Denied
from rexec_broker.config import BrokerSettings
from rexec_broker.connections import ConnectionGuard, peer_address
from rexec_broker.outbound import Outbound, PeerKey
from rexec_broker.pressure import FlowControl
from rexec_broker.registration import (
    Revocations,
    answer_revoke,
    expired,
    registration_refusal,
)
from rexec_broker.routing import ClientConn, Refusal, RoutingTable, Running, WorkerConn

log = logging.getLogger("rexec.broker")

SWEEP_INTERVAL = 5.0
GUARD_INTERVAL = 1.0  # how often connections that did not authenticate in time are dropped
PROBE_DELAYS = (0.0, 0.05, 0.3, 1.0)
BACKLOG_RETRY_SECONDS = 0.005
DRAIN_LIMIT = 500  # messages taken from one router before the other gets its turn
DRAIN_ROUNDS = 4  # router passes per loop turn; the rest waits for the next turn (no sleep)
FRONT, BACK = 1, 2  # bits naming the routers that must be checked for messages
MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

_CLIENT_TO_BROKER = p.CLIENT_TO_BROKER
_WORKER_TO_BROKER = p.WORKER_TO_BROKER
_REQUEST, _REPLY = p.REQUEST, p.REPLY
_monotonic = time.monotonic


class Broker:
    """Routes requests from authenticated clients to their own user's worker and back."""

    def __init__(
        self, settings: BrokerSettings, validator: CachingValidator, signing_key: bytes
    ) -> None:
        settings.check()
        self.settings = settings
        self._signing_key = signing_key
        self._curve_secret = (
            load_curve_secret(settings.curve_secret_key_path)
            if settings.curve_secret_key_path
            else None
        )
        self.table = RoutingTable(settings.max_in_flight)
        self.activity = ActivityTracker()
        self.revocations = Revocations()
        self.stats: collections.Counter[str] = collections.Counter()
        seed_connection_ids()  # before any router exists: it draws its first id at creation
        self._context = zmq.Context(io_threads=2)
        self.frontend, self.backend = (
            make_router(
                self._context,
                url,
                self._curve_secret,
                settings.max_message_bytes,
                settings.queue_depth,
            )
            for url in (settings.frontend, settings.backend)
        )
        self.front_guard = ConnectionGuard("client", settings.connection_limits)
        self.back_guard = ConnectionGuard("worker", settings.connection_limits)
        front_monitor = self.frontend.get_monitor_socket(MONITOR_EVENTS)
        back_monitor = self.backend.get_monitor_socket(MONITOR_EVENTS)
        self._monitors = {
            front_monitor: ("clients", self.front_guard),
            back_monitor: ("workers", self.back_guard),
        }
        self._guards = {
            self.frontend: (self.front_guard, front_monitor),
            self.backend: (self.back_guard, back_monitor),
        }
        self._waker = Waker()
        self.admission = Admission(
            validator, settings.validation_threads, self._waker.wake, settings.auth.cache_ttl
        )
        self._stopping = False
        self._probe_at: list[tuple[float, str]] = []
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        self._next_guard = time.monotonic() + GUARD_INTERVAL
        self._next_timer = self._next_guard  # the earliest of the sweeps and the probes
        self._outbound = Outbound(
            self.frontend,
            self.backend,
            self._drop_peer,
            self.stats,
            settings.flow_limits,
            lambda key, level: self.flow.on_pressure(key, level),
        )
        self.flow = FlowControl(
            self.table, self._outbound, self._outbound.send, self._fail_request, self.stats
        )
        # Bound once: every request and reply is sent through them.
        self._send, self._hold = self._outbound.send, self._outbound.hold

    @property
    def frontend_url(self) -> str:
        return str(self.frontend.getsockopt_string(zmq.LAST_ENDPOINT))

    @property
    def backend_url(self) -> str:
        return str(self.backend.getsockopt_string(zmq.LAST_ENDPOINT))

    def stop(self) -> None:
        self._stopping = True
        self._waker.wake()

    def serve_forever(self) -> None:
        frontend, backend = self.frontend, self.backend
        front_fd, back_fd = frontend.fileno(), backend.fileno()
        monitors = {monitor.fileno(): monitor for monitor in self._monitors}
        waker_fd = self._waker.fileno()
        poller = select.epoll()
        for fd in (front_fd, back_fd, waker_fd, *monitors):
            poller.register(fd, select.EPOLLIN)
        log.info("broker serving clients on %s, workers on %s", self.frontend_url, self.backend_url)
        poll, monotonic = poller.poll, time.monotonic
        drain, handle_client, handle_worker = self._drain, self._handle_client, self._handle_worker
        admission, backlogs = self.admission, self._outbound.backlogs
        ended = admission.ended  # checked every turn: no call when nothing ended
        front_known, back_known = self.front_guard.known, self.back_guard.known
        # A ZeroMQ socket's descriptor only signals *changes*: it stays quiet while messages are
        # already queued, and any operation on the socket (a send included) may consume the
        # signal of a message that arrived meanwhile. So a router is drained until it reports
        # nothing readable, and a router sent on after that is checked again before the loop
        # sleeps. ``check`` holds the routers still to be checked; the first turn checks all.
        check = FRONT | BACK
        signalled = 0  # the routers whose descriptor woke the loop
        self._handle_monitors(list(monitors.values()))
        try:
            while not self._stopping:
                try:
                    if check:
                        timeout = 0.0
                    else:
                        timeout = self._next_timer - monotonic()
                        if backlogs and timeout > BACKLOG_RETRY_SECONDS:
                            timeout = BACKLOG_RETRY_SECONDS
                        elif timeout < 0.0:
                            timeout = 0.0
                    for fd, _ in poll(timeout):
                        if fd == front_fd:
                            signalled |= FRONT
                        elif fd == back_fd:
                            signalled |= BACK
                        elif fd == waker_fd:
                            self._waker.drain()
                        elif fd in monitors:
                            self._handle_monitors([monitors[fd]])
                    # Work that sends on either router comes first, so the drain below covers it.
                    if ended:
                        for decision in admission.finished(self.table.clients):
                            self._apply(decision)
                        check = FRONT | BACK
                    if monotonic() >= self._next_timer:
                        self._run_timers()
                        check = FRONT | BACK
                    if backlogs:
                        self._outbound.flush()
                        check = FRONT | BACK
                    check |= signalled
                    for _ in range(DRAIN_ROUNDS):
                        if check & FRONT:
                            check ^= FRONT
                            count = drain(frontend, handle_client, signalled & FRONT, front_known)
                            if count:  # requests went to the workers
                                check |= BACK if count < DRAIN_LIMIT else BACK | FRONT
                        if check & BACK:
                            check ^= BACK
                            count = drain(backend, handle_worker, signalled & BACK, back_known)
                            if count:  # replies went to the clients
                                check |= FRONT if count < DRAIN_LIMIT else FRONT | BACK
                        signalled = 0
                        if not check:
                            break
                except Exception:
                    # A bug triggered by one peer must not take every user's broker down.
                    log.exception("a broker loop step failed; carrying on")
                    self.stats["loop_errors"] += 1
                    self._outbound.release()
                    check, signalled = FRONT | BACK, 0
        finally:
            poller.close()
            self._close()

    def _handle_monitors(self, monitors: list[zmq.Socket]) -> None:
        for monitor in monitors:
            side, guard = self._monitors[monitor]
            lost = False
            for event, fd in read_monitor_values(monitor):
                if event == zmq.EVENT_ACCEPTED:
                    guard.accepted(fd)
                elif event == zmq.EVENT_DISCONNECTED:
                    guard.disconnected(fd)
                    lost = True
            if lost:
                now = time.monotonic()
                self._probe_at.extend((now + delay, side) for delay in PROBE_DELAYS)
                self._next_timer = min(self._next_timer, now)

    def _close(self) -> None:
        self.admission.close()
        for monitor in self._monitors:
            monitor.close(linger=0)
        self.frontend.close(linger=0)
        self.backend.close(linger=0)
        self._context.term()
        self._waker.close()

    def _drain(self, sock: zmq.Socket, handler: Any, signalled: int, known: set[bytes]) -> int:
        """Handle queued messages until the router has none left (or DRAIN_LIMIT were taken);
        return how many were taken.

        ``signalled`` says the router's descriptor woke the loop: a message is then almost
        certainly queued, so it is received without checking first. Handlers get the whole
        message, routing id frame first. ``known``: the connections whose first message passed
        their router's guard; any other goes to ``_first_message`` first.
        """
        # Checking ZMQ_EVENTS is much cheaper than a receive that raises zmq.Again.
        if not signalled and not readable(sock):
            return 0
        hold = self._hold
        count = 0
        burst = False
        try:
            while count < DRAIN_LIMIT:
                try:
                    frames = receive_message(sock)
                except zmq.Again:
                    return count
                count += 1
                rid = frames[0].bytes
                if rid in known or self._first_message(sock, rid, frames):
                    try:
                        handler(rid, frames)
                    except Exception:
                        log.exception("broker failed to handle a message; dropped it")
                if not readable(sock):
                    return count
                hold()  # more are queued: a burst, whose sends leave in batches
                burst = True
            return count
        finally:
            if burst:
                self._outbound.release()

    def _first_message(self, sock: zmq.Socket, rid: bytes, frames: list[zmq.Frame]) -> bool:
        """A connection's first message: may it be handled? (Its guard decides.)"""
        guard, monitor = self._guards[sock]
        self._handle_monitors([monitor])  # the connection's accept, if not read yet
        return guard.first_message(rid, frames[0])

    def _drop_peer(self, key: PeerKey, reason: str) -> None:
        if key[0]:
            self._drop_client(key[1])
        else:
            self._drop_worker(key[1], f"the worker's connection failed: {reason}")

    def _to_client(self, rid: bytes, frames: list[Any]) -> bool:
        return self._send(True, rid, [rid, *frames])

    def _to_worker(self, rid: bytes, tag: Any, frames: list[Any]) -> bool:
        return self._send(False, rid, [rid, tag, *frames])

    def _fail_request(self, client_rid: bytes, request_id: str, code: str, message: str) -> None:
        self._to_client(client_rid, p.make_error_reply(request_id, code, message))

    # -- clients ---------------------------------------------------------------------------

    def _handle_client(self, rid: bytes, frames: list[Any]) -> None:
        """One client message: ``[client routing id, header, payload...]``."""
        if len(frames) < 2:
            return
        try:
            header = p.parse_header(frames[1].bytes, _CLIENT_TO_BROKER)
        except ProtocolError as exc:
            code = p.E_PROTOCOL_VERSION if "version" in str(exc) else p.E_BAD_MESSAGE
            self._to_client(rid, p.make_refused(code, str(exc)))
            return
        msg_type = header["t"]
        # Each frame is capped by the router's ZMQ_MAXMSGSIZE; the total is checked here.
        size = sum(map(len, frames)) - len(rid)
        if size > self.settings.max_message_bytes:
            if msg_type == _REQUEST and "id" in header:
                self._fail_request(rid, header["id"], p.E_TOO_LARGE, self._too_large(size))
            return
        if msg_type == _REQUEST:
            request_id = header.get("id")
            if not isinstance(request_id, str):
                self._to_client(rid, p.make_refused(p.E_BAD_MESSAGE, "a request needs an id"))
                return
            target = self.table.start_request(rid, request_id)
            if isinstance(target, Refusal):
                self._fail_request(rid, request_id, target.code, target.message)
                return
            client = self.table.clients[rid]  # start_request found it
            worker_rid = target.rid
            busy = self.flow.refuse_request(worker_rid)
            if busy is not None:
                self.table.finish_request((rid, request_id))
                self._fail_request(rid, request_id, p.E_BUSY, busy)
                return
            # The worker sees the connection's route tag. If the worker's connection is gone,
            # dropping it has already failed this request.
            frames[0] = client.tag
            self._send(False, worker_rid, [worker_rid, *frames], size + len(client.tag))
            # Bookkeeping after the send: the request does not wait for it.
            self.activity.seen[target.key] = time.time()
            self._revalidate_if_due(client)
        elif msg_type == p.CREDIT:
            received = header.get("n")
            if type(received) is int:
                self._outbound.credit((True, rid), received)
        elif msg_type in p.ROUTED_REQUEST_FOLLOWUPS:
            self._client_followup(rid, header, frames)
        elif msg_type == p.PING:
            known = rid in self.table.clients
            self._to_client(
                rid,
                p.make_pong() if known else p.make_refused(p.E_UNAUTHENTICATED, "say hello again"),
            )
        elif msg_type == p.HELLO:
            decision = self.admission.hello(rid, header, peer_address(frames[1]))
            if decision is not None:
                self._apply(decision)
        elif msg_type == p.ACTIVITY:
            reply = answer_activity(header, self.table, self.activity, self._signing_key)
            self._to_client(rid, reply)
        elif msg_type == p.REVOKE:
            reply, revoked = answer_revoke(header, self.revocations, self._signing_key)
            self._to_client(rid, reply)
            if revoked is not None:
                self._drop_instance(*revoked)

    def _too_large(self, size: int) -> str:
        limit = self.settings.max_message_bytes
        return (
            f"message of {size:,} bytes exceeds the broker's limit of {limit:,} bytes; "
            "send large data in pieces or from shared storage"
        )

    def _client_followup(self, rid: bytes, header: dict[str, Any], frames: list[Any]) -> None:
        request_id = header.get("id")
        worker_rid = self.table.followup_target(rid, request_id) if request_id else None
        client = self.table.clients.get(rid)
        if worker_rid is None or client is None:
            if header["t"] == p.NEXT and request_id:
                self._fail_request(rid, request_id, p.E_UNKNOWN_REQUEST, "no such request")
            return
        frames[0] = client.tag
        self._send(False, worker_rid, [worker_rid, *frames])
        self._revalidate_if_due(client)

    def _revalidate_if_due(self, client: ClientConn) -> None:
        """Check the client's token again in the background once its validation is older than
        the cache TTL (a revoked token then ends the session)."""
        if (
            time.monotonic() - client.validated_at > self.settings.auth.cache_ttl
            and not client.revalidating
        ):
            self.admission.revalidate(client)

    def _apply(self, decision: Decision) -> None:
        """Act on an admission decision: bind the client, or refuse it, or end its session."""
        if isinstance(decision, Admitted):
            self._accept_client(decision)
        elif isinstance(decision, Denied):
            self.stats[decision.code] += 1
            self._to_client(decision.rid, p.make_refused(decision.code, decision.message))
        else:
            log.info("token of user %s is no longer valid; closing its session", decision.user)
            self._drop_client(decision.rid)
            self.front_guard.unauthenticated(decision.rid)
            self._to_client(
                decision.rid, p.make_refused(p.E_AUTH_FAILED, "your token is no longer valid")
            )

    def _accept_client(self, admitted: Admitted) -> None:
        rid, worker, identity = admitted.rid, admitted.worker, admitted.identity
        current = self.table.clients.get(rid)
        conn = ClientConn(
            rid, identity.user, identity.groups, worker, admitted.token, time.monotonic()
        )
        if current is not None and current.worker_key == conn.worker_key:
            current.token, current.validated_at = admitted.token, conn.validated_at
            conn = current
        else:
            self._cancel_on_workers(self.table.add_client(conn))
        self.front_guard.authenticated(rid)
        worker_conn = self.table.worker_for(conn)
        info = worker_conn.info if worker_conn else None
        log.info("client connected: user=%s worker=%s", identity.user, worker)
        self._to_client(
            rid,
            p.make_welcome(
                identity.user,
                worker,
                info,
                self.settings.max_message_bytes,
                self.settings.max_in_flight,
                self._outbound.limits.window,
            ),
        )

    def _drop_client(self, rid: bytes) -> None:
        self.admission.forget(rid)
        self._outbound.forget((True, rid))
        self._cancel_on_workers(self.table.remove_client(rid))

    def _cancel_on_workers(self, running: list[Running]) -> None:
        for worker_rid, tag, request_id in running:
            self._to_worker(worker_rid, tag, p.make_cancel(request_id))

    # -- workers ---------------------------------------------------------------------------

    def _handle_worker(self, rid: bytes, frames: list[Any]) -> None:
        """One worker message: ``[worker routing id, route tag, header, payload...]``."""
        if len(frames) < 3:
            return
        tag = frames[1].bytes
        try:
            header = p.parse_header(frames[2].bytes, _WORKER_TO_BROKER)
        except ProtocolError as exc:
            self._to_worker(rid, p.NO_TAG, p.make_refused(p.E_BAD_MESSAGE, str(exc)))
            return
        msg_type = header["t"]
        if msg_type == p.CREDIT:
            received = header.get("n")
            if type(received) is int:
                self._outbound.credit((False, rid), received)
            return
        worker = self.table.workers.get(rid)
        if msg_type == p.REGISTER:
            self._worker_register(rid, header)
            return
        if worker is None:
            self._to_worker(rid, p.NO_TAG, p.make_refused(p.E_UNAUTHENTICATED, "register first"))
            return
        worker.last_heard = _monotonic()
        if msg_type == p.PING:
            stats = header.get("stats")
            if stats is not None:
                try:
                    worker.stats = p.check_worker_info(stats, "ping stats")
                except ProtocolError:
                    self.stats["bad_worker_stats"] += 1
            self._to_worker(rid, p.NO_TAG, p.make_pong())
            return
        request_id = header.get("id")
        if type(request_id) is not str:
            self.stats["dropped_unrouted"] += 1
            return
        client_rid = self.table.route_response(rid, tag, request_id)
        if client_rid is None:
            self.stats["dropped_unrouted"] += 1
            return
        terminal = msg_type == _REPLY
        # Each frame is capped by the router's ZMQ_MAXMSGSIZE; the total is checked here.
        size = sum(map(len, frames)) - len(rid)
        if size > self.settings.max_message_bytes:
            self.table.finish_request((client_rid, request_id))
            if not terminal:
                self._to_worker(rid, tag, p.make_cancel(request_id))
            self._fail_request(client_rid, request_id, p.E_TOO_LARGE, self._too_large(size))
            return
        frames[1] = client_rid  # the route tag makes way for the client's connection id
        self._send(True, client_rid, frames[1:], size - len(tag))
        if terminal:  # bookkeeping after the send: the reply does not wait for it
            self.table.finish_request((client_rid, request_id))
            self.activity.seen[worker.key] = time.time()

    def _worker_register(self, rid: bytes, header: dict[str, Any]) -> None:
        try:
            claims = verify_worker_credential(self._signing_key, header.get("credential", ""))
        except AuthError as exc:
            self.stats["worker_refused"] += 1
            self._to_worker(rid, p.NO_TAG, p.make_refused(p.E_AUTH_FAILED, str(exc)))
            return
        try:
            info = p.check_worker_info(header.get("info", {}))
        except ProtocolError as exc:
            self.stats["worker_refused"] += 1
            self._to_worker(rid, p.NO_TAG, p.make_refused(p.E_BAD_MESSAGE, str(exc)))
            return
        key = (claims.user, claims.worker)
        holder_rid = self.table.worker_by_key.get(key)
        holder = self.table.workers.get(holder_rid) if holder_rid is not None else None
        refusal = registration_refusal(claims, holder, self.revocations)
        if refusal is not None:
            self.stats["worker_refused"] += 1
            self._to_worker(rid, p.NO_TAG, p.make_refused(refusal.code, refusal.message))
            return
        existing = self.table.workers.get(rid)
        if existing is not None and existing.key != key:
            self._drop_worker(rid, "the worker re-registered as someone else")
        conn = WorkerConn(
            rid,
            claims.user,
            claims.worker,
            info,
            instance=claims.instance,
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
        )
        replaced = self.table.register_worker(conn)
        if replaced is not None:
            self._drop_worker(replaced.rid, "the worker was replaced by a new one")
            self._to_worker(
                replaced.rid, p.NO_TAG, p.make_refused(p.E_REPLACED, "a newer worker registered")
            )
        self.back_guard.authenticated(rid)
        log.info("worker registered: user=%s worker=%s", claims.user, claims.worker)
        self._to_worker(
            rid,
            p.NO_TAG,
            p.make_registered(
                claims.user,
                claims.worker,
                self.settings.max_message_bytes,
                self._outbound.limits.window,
            ),
        )
        self._notify_clients((claims.user, claims.worker), "online", info)

    def _drop_worker(self, rid: bytes, reason: str) -> None:
        self._outbound.forget((False, rid))
        conn, lost = self.table.remove_worker(rid)
        if conn is None:
            return
        log.info("worker gone: user=%s worker=%s (%s)", conn.user, conn.name, reason)
        message = (
            f"the worker {conn.name!r} died or disconnected while running this request "
            f"({reason}); its state is lost. The next call starts a new worker"
        )
        for client_rid, request_id in lost:
            self._fail_request(client_rid, request_id, p.E_WORKER_DIED, message)
        if self.table.worker_by_key.get(conn.key) is None:
            self._notify_clients(conn.key, "offline", conn.info)

    def _drop_instance(self, user: str, name: str, instance: str) -> None:
        """The spawner deleted this worker: if it is still registered, it goes now."""
        rid = self.table.worker_by_key.get((user, name))
        worker = self.table.workers.get(rid) if rid is not None else None
        if worker is not None and worker.instance == instance:
            log.info("worker of user %s revoked by the spawner: %s", user, name)
            self._drop_worker(worker.rid, "the spawner deleted it")
            self._to_worker(
                worker.rid, p.NO_TAG, p.make_refused(p.E_AUTH_FAILED, "this worker was deleted")
            )

    def _notify_clients(self, key: tuple[str, str], state: str, info: dict[str, Any]) -> None:
        for client_rid in list(self.table.clients_by_key.get(key, ())):
            self._to_client(client_rid, p.make_worker_state(state, key[1], info))

    # -- timers ----------------------------------------------------------------------------

    def _drop_expired(self) -> None:
        """Workers whose credential expired without a renewal go; so do old revocations."""
        wall = time.time()
        for worker in [w for w in self.table.workers.values() if expired(w, wall)]:
            self._drop_worker(worker.rid, "its credential expired and was not renewed")
            self._to_worker(
                worker.rid,
                p.NO_TAG,
                p.make_refused(p.E_AUTH_FAILED, "your credential expired; the spawner renews it"),
            )
        self.revocations.prune()

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = {side for at, side in self._probe_at if at <= now}
        self._probe_at = [(at, side) for at, side in self._probe_at if at > now]
        if now >= self._next_sweep:
            due |= {"clients", "workers"}
            self._next_sweep = now + SWEEP_INTERVAL
            self._drop_expired()
            self.flow.sweep()
        if "workers" in due:
            for rid in list(self.table.workers):
                self._to_worker(rid, p.NO_TAG, p.make_probe())
        if "clients" in due:
            for rid in list(self.table.clients):
                self._to_client(rid, p.make_probe())
        if now >= self._next_guard:
            self._next_guard = now + GUARD_INTERVAL
            for guard, monitor in self._guards.values():
                if guard.waiting:
                    self._handle_monitors([monitor])  # closes reported meanwhile come first
                    guard.sweep()
        self._next_timer = min(
            [self._next_sweep, self._next_guard, *(at for at, _ in self._probe_at)]
        )
