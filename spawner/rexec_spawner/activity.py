"""Ask the broker which workers are registered and busy (the ``activity`` query).

The spawner connects to the broker frontend like a client, but instead of a user token it
presents a short-lived service credential signed with the shared signing key; the broker answers
from its routing table. Backends use it to see a worker register; idle culling uses it to see
which workers have requests in flight and since when the others have been idle.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from rexec import protocol as p
from rexec.credentials import make_service_credential
from rexec.errors import ProtocolError, SpawnError
from rexec.transport import make_dealer

CREDENTIAL_TTL = 120.0


class ActivityUnavailable(SpawnError):
    """The broker did not answer the activity query, or refused it."""


@dataclass(frozen=True)
class WorkerActivity:
    """One registered worker as the broker sees it."""

    user: str
    worker: str
    inflight: int
    last_activity: float
    idle_seconds: float
    registered_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    instance: str = ""
    # Seconds since the broker last heard anything from the worker (its pings come every
    # second): a worker whose Python is stuck goes quiet even while its connection lives.
    silent_seconds: float = 0.0

    @property
    def busy(self) -> bool:
        return self.inflight > 0


class BrokerActivity:
    """Queries one broker; each query uses a fresh connection, so no answer can be stale."""

    def __init__(
        self, url: str, public_key: str | None, signing_key: bytes, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.public_key = public_key
        self.timeout = timeout
        self._signing_key = signing_key
        self._context = zmq.Context()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BrokerActivity({self.url!r})"

    def query(self, user: str | None = None) -> list[WorkerActivity]:
        """All registered workers (of ``user``, if given); raises ``ActivityUnavailable``."""
        request_id = secrets.token_hex(8)
        credential = make_service_credential(self._signing_key, "spawner", CREDENTIAL_TTL)
        return self._ask(
            p.make_activity_query(request_id, credential, user),
            lambda frames: _parse_reply(frames, request_id),
            "activity query",
        )

    async def fetch(self, user: str | None = None) -> list[WorkerActivity]:
        return await asyncio.to_thread(self.query, user)

    def revoke(self, user: str, worker: str, instance: str, until: float | None) -> None:
        """Tell the broker the worker ``instance`` is gone: its credential stops working at
        once, and the broker drops it if it is still connected. Raises
        ``ActivityUnavailable`` if the broker did not confirm."""
        request_id = secrets.token_hex(8)
        credential = make_service_credential(self._signing_key, "spawner", CREDENTIAL_TTL)
        self._ask(
            p.make_revoke(request_id, credential, user, worker, instance, until),
            lambda frames: _parse_revoke_reply(frames, request_id),
            "revocation",
        )

    async def revoke_async(
        self, user: str, worker: str, instance: str, until: float | None
    ) -> None:
        await asyncio.to_thread(self.revoke, user, worker, instance, until)

    def _ask(self, message: list[bytes], answer: Any, what: str) -> Any:
        """Send ``message`` on a fresh connection; return the first non-None ``answer(frames)``."""
        with self._lock:
            sock = make_dealer(self._context, self.public_key)
        try:
            sock.connect(self.url)
            sock.send_multipart(message)
            deadline = time.monotonic() + self.timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                    raise ActivityUnavailable(
                        f"the broker at {self.url} did not answer the {what} within "
                        f"{self.timeout:g} s; check REXEC_BROKER_INTERNAL_URL"
                    )
                result = answer(sock.recv_multipart())
                if result is not None:
                    return result
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._context.term()


def _our_reply(
    frames: list[bytes], request_id: str, reply_type: str, what: str, hint: str = ""
) -> dict[str, Any] | None:
    """The header of our ``reply_type`` answer; None for anything else (probes, other replies);
    ``ActivityUnavailable`` if the broker refused or sent nonsense."""
    try:
        header = p.parse_header(frames[0])
    except (ProtocolError, IndexError) as exc:
        raise ActivityUnavailable(f"the broker sent a malformed {what} reply: {exc}") from None
    if header["t"] == p.REFUSED:
        error = header.get("error") or {}
        raise ActivityUnavailable(f"the broker refused the {what}: {error.get('message')}")
    if header["t"] != reply_type or header.get("id") != request_id:
        return None
    if header.get("status") != p.STATUS_OK:
        error = header.get("error") or {}
        raise ActivityUnavailable(f"the broker refused the {what} ({error.get('message')}){hint}")
    return header


def _parse_reply(frames: list[bytes], request_id: str) -> list[WorkerActivity] | None:
    """The rows of our activity reply; None for anything else."""
    hint = "; the spawner and the broker must share the signing key (REXEC_SIGNING_KEY_FILE)"
    if _our_reply(frames, request_id, p.ACTIVITY_REPLY, "activity query", hint) is None:
        return None
    try:
        rows = p.parse_json_frame(frames[1])
        return [
            WorkerActivity(
                user=str(row["user"]),
                worker=str(row["worker"]),
                inflight=int(row["inflight"]),
                last_activity=float(row["last_activity"]),
                idle_seconds=float(row["idle_seconds"]),
                registered_at=float(row.get("registered_at") or 0.0),
                info=dict(row.get("info") or {}),
                instance=str(row.get("instance") or ""),
                silent_seconds=float(row.get("silent_seconds") or 0.0),
            )
            for row in rows
        ]
    except (ProtocolError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ActivityUnavailable(f"the broker sent a malformed activity reply: {exc}") from None


def _parse_revoke_reply(frames: list[bytes], request_id: str) -> bool | None:
    return _our_reply(frames, request_id, p.REVOKE_REPLY, "revocation") is not None or None
