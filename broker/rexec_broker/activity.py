"""Worker activity, for the spawner's idle culling: answered from the routing table.

The spawner asks on the broker frontend with an ``activity`` message carrying a short-lived
*service* credential signed with the key the broker already shares with it (see
:mod:`rexec.credentials`); there is no extra port and nothing unauthenticated is answered. The
reply lists every registered worker (or those of one user) with the requests it has in flight
and when it last started or finished one, so a long-running silent cell counts as activity.
"""

from __future__ import annotations

import time
from typing import Any

from rexec import protocol as p
from rexec.credentials import verify_service_credential
from rexec.errors import AuthError
from rexec_broker.routing import RoutingTable, WorkerKey


class ActivityTracker:
    """When each (user, worker) last started or finished a request (seconds since the epoch)."""

    def __init__(self) -> None:
        # The broker's message loop stores ``time.time()`` here directly, once per request
        # started or finished; ``touch`` does the same for everyone else.
        self.seen: dict[WorkerKey, float] = {}

    def touch(self, key: WorkerKey) -> None:
        self.seen[key] = time.time()

    def last(self, key: WorkerKey) -> float | None:
        return self.seen.get(key)

    def prune(self, live: set[WorkerKey]) -> None:
        """Forget workers that are no longer registered, so the map stays bounded."""
        for key in [key for key in self.seen if key not in live]:
            del self.seen[key]


def make_activity_rows(
    table: RoutingTable, tracker: ActivityTracker, user: str | None = None
) -> list[dict[str, Any]]:
    """One row per registered worker (of ``user``, if given), sorted by user and name."""
    now = time.time()
    monotonic = time.monotonic()
    rows = []
    for conn in table.workers.values():
        if table.worker_by_key.get(conn.key) != conn.rid:
            continue  # replaced, about to be dropped
        if user is not None and conn.user != user:
            continue
        last = max(tracker.last(conn.key) or 0.0, conn.registered_at)
        inflight = len(conn.inflight)
        rows.append(
            {
                "user": conn.user,
                "worker": conn.name,
                "inflight": inflight,
                "last_activity": round(last, 3),
                "idle_seconds": 0.0 if inflight else round(max(0.0, now - last), 3),
                "registered_at": round(conn.registered_at, 3),
                "instance": conn.instance,
                "silent_seconds": round(max(0.0, monotonic - conn.last_heard), 3),
                "info": conn.info,
            }
        )
    rows.sort(key=lambda row: (row["user"], row["worker"]))
    return rows


def answer_activity(
    header: dict[str, Any], table: RoutingTable, tracker: ActivityTracker, signing_key: bytes
) -> list[bytes]:
    """The reply to an ``activity`` header: the rows, or an ``auth_failed`` error."""
    request_id = header.get("id") or "activity"
    try:
        verify_service_credential(signing_key, header.get("credential"))
    except AuthError as exc:
        return p.make_activity_reply(request_id, None, p.error_info(p.E_AUTH_FAILED, str(exc)))
    user = header.get("user")
    if user is not None and not isinstance(user, str):
        return p.make_activity_reply(
            request_id, None, p.error_info(p.E_BAD_MESSAGE, "user must be a string")
        )
    tracker.prune(set(table.worker_by_key))
    return p.make_activity_reply(request_id, make_activity_rows(table, tracker, user))
