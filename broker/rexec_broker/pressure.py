"""What the broker does when messages pile up for a peer that reads too slowly, or not at all
(the thresholds and their bookkeeping are in ``rexec_broker.outbound``).

* A **client** that falls behind: the workers producing for it are asked to pause the output of
  its requests (``flow``) and to resume once it caught up. If output still piles up past the
  overflow bound, the output held for it is dropped with a notice in each request's stderr (as
  Jupyter does past its output rate limit); replies and generator items are kept. A client that
  reads nothing for ``stall_after`` seconds while messages wait has its requests cancelled.
* A **worker** that falls behind: new requests to it are refused (``busy``) while too much waits
  for it; one that reads nothing for ``stall_after`` seconds gets the requests held for it
  failed, so no caller waits on a worker that does not read.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from rexec import protocol as p
from rexec.errors import ProtocolError
from rexec_broker.outbound import Outbound, PeerKey, message_bytes
from rexec_broker.routing import RoutingTable

log = logging.getLogger("rexec.broker")

WORKER_BUSY = (
    "the worker has too many requests waiting for it to read (it may be hung or overloaded); "
    "retry later, or restart it"
)
WORKER_STALLED = "the worker stopped reading its requests; the request was not delivered"
CLIENT_STALLED = (
    "this connection stopped reading while its requests kept sending it data; the request was "
    "cancelled"
)

# (to client rid, message frames after the routing id) -> sent
Send = Callable[[bool, bytes, list[Any]], bool]
# (client rid, request id, code, message)
Fail = Callable[[bytes, str, str, str], None]


def dropped_notice(size: int) -> dict[str, str]:
    return {
        "name": "stderr",
        "text": f"[rexec: {size:,} bytes of output were dropped: they arrived faster than this "
        "client read them; print less, or write large output to a file]\n",
    }


class FlowControl:
    def __init__(
        self,
        table: RoutingTable,
        outbound: Outbound,
        send: Send,
        fail: Fail,
        stats: collections.Counter[str],
    ) -> None:
        self.table = table
        self.outbound = outbound
        self._send = send
        self._fail = fail
        self._stats = stats

    def on_pressure(self, key: PeerKey, level: str) -> None:
        """A peer's held messages crossed a threshold (see ``rexec_broker.outbound``)."""
        to_client, rid = key
        if not to_client:
            return  # requests are not dropped by size: ``refuse_request`` keeps them bounded
        if level == "overflow":
            self._drop_output(rid)
        else:  # pause or resume the workers that produce what this client does not read
            self._flow_to_workers(rid, pause=level == "pause")

    def refuse_request(self, worker_rid: bytes) -> str | None:
        """Why a new request to this worker must not be queued now, or None."""
        return WORKER_BUSY if self.outbound.crowded((False, worker_rid)) else None

    def sweep(self) -> None:
        """Peers that read nothing for a long while, with messages waiting for them."""
        for to_client, rid in self.outbound.stalled():
            if to_client:
                self._cancel_client(rid)
            else:
                self._fail_held_requests(rid)

    # -- clients ---------------------------------------------------------------------------

    def _flow_to_workers(self, client_rid: bytes, pause: bool) -> None:
        client = self.table.clients.get(client_rid)
        if client is None:
            return
        for request_id in list(client.inflight):
            worker_rid = self.table.inflight.get((client_rid, request_id))
            if worker_rid is not None:
                message = [worker_rid, client.tag, *p.make_flow(request_id, pause)]
                self._send(False, worker_rid, message)

    def _drop_output(self, client_rid: bytes) -> None:
        kept: list[list[Any]] = []
        lost: dict[str, int] = {}
        for message in self.outbound.drop((True, client_rid)):
            header = _header(message, 1)
            request_id = header.get("id") if header else None
            if header and header["t"] == p.OUTPUT and type(request_id) is str:
                if request_id not in lost:
                    lost[request_id] = 0
                    kept.append([client_rid, request_id])  # where its notice goes
                lost[request_id] += message_bytes(message)
            else:
                kept.append(message)
        total = sum(lost.values())
        client = self.table.clients.get(client_rid)
        log.warning(
            "a client of user %s reads too slowly; dropped %s bytes of output held for it",
            client.user if client else "?",
            f"{total:,}",
        )
        self._stats["output_dropped"] += total
        for message in kept:
            if len(message) == 2 and isinstance(message[1], str):  # a notice's place
                notice = p.make_output(message[1], "stream", dropped_notice(lost[message[1]]))
                message = [client_rid, *notice]
            self._send(True, client_rid, message)

    def _cancel_client(self, client_rid: bytes) -> None:
        self.outbound.drop((True, client_rid))
        client = self.table.clients.get(client_rid)
        if client is None:
            return
        log.warning("cancelled the requests of a client of user %s: it reads nothing", client.user)
        self._stats["stalled_clients"] += 1
        for request_id in list(client.inflight):
            worker_rid = self.table.inflight.get((client_rid, request_id))
            self.table.finish_request((client_rid, request_id))
            if worker_rid is not None:
                message = [worker_rid, client.tag, *p.make_cancel(request_id)]
                self._send(False, worker_rid, message)
            self._fail(client_rid, request_id, p.E_BUSY, CLIENT_STALLED)

    # -- workers ---------------------------------------------------------------------------

    def _fail_held_requests(self, worker_rid: bytes) -> None:
        self._stats["stalled_workers"] += 1
        for message in self.outbound.drop((False, worker_rid)):
            header = _header(message, 2)
            client_rid = self.table.by_tag.get(bytes(message[1])) if len(message) > 1 else None
            request_id = header.get("id") if header else None
            if header and header["t"] == p.REQUEST and client_rid and type(request_id) is str:
                self.table.finish_request((client_rid, request_id))
                self._fail(client_rid, request_id, p.E_BUSY, WORKER_STALLED)


def _header(message: list[Any], index: int) -> dict[str, Any] | None:
    try:
        return p.parse_header(bytes(message[index]))
    except (ProtocolError, IndexError, TypeError):
        return None
