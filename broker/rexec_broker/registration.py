"""Which worker credentials the broker accepts, beyond a valid signature and expiry.

Pure rules over what the broker knows, no sockets:

* A credential names one worker *instance* (a random id the spawner gives each worker it
  starts). When the spawner deletes a worker it revokes that instance (the ``revoke`` service
  message, signed like the activity query), and the broker refuses it from then on, and drops it
  if it is registered; a revocation is kept until the credential would have expired anyway.
* Of two instances for the same user and worker name, the one issued later wins: a registration
  with an older credential than the registered one is refused, so a stale copy of a credential
  cannot take over a live worker's name.
* A registered worker whose credential expires without being renewed (the spawner renews it by
  rewriting the file the worker reads; the worker registers again with it) is dropped.
"""

from __future__ import annotations

import time
from typing import Any

from rexec import protocol as p
from rexec.credentials import WorkerClaims, verify_service_credential
from rexec.errors import AuthError
from rexec_broker.routing import Refusal, WorkerConn

MAX_REVOKED = 100_000
# How long a revocation of a credential without an expiry is kept.
REVOKE_WITHOUT_EXPIRY_SECONDS = 7 * 24 * 3600.0


class Revocations:
    """Revoked worker instances, each until its credential's expiry."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def revoke(self, instance: str, until: float | None) -> None:
        if len(self._until) >= MAX_REVOKED:
            self.prune()
            while len(self._until) >= MAX_REVOKED:
                del self._until[next(iter(self._until))]  # the oldest first
        self._until[instance] = until or time.time() + REVOKE_WITHOUT_EXPIRY_SECONDS

    def revoked(self, instance: str) -> bool:
        until = self._until.get(instance)
        return until is not None and until > time.time()

    def prune(self) -> None:
        now = time.time()
        for instance in [i for i, until in self._until.items() if until <= now]:
            del self._until[instance]

    def __len__(self) -> int:
        return len(self._until)


def registration_refusal(
    claims: WorkerClaims, holder: WorkerConn | None, revocations: Revocations
) -> Refusal | None:
    """Why a worker presenting ``claims`` may not register, or None. ``holder``: the worker
    registered under the same user and name now, if any."""
    if claims.instance and revocations.revoked(claims.instance):
        return Refusal(
            p.E_AUTH_FAILED,
            "this worker was deleted and its credential revoked; ask the spawner for a new one",
        )
    if (
        holder is not None
        and holder.instance != claims.instance
        and holder.issued_at > claims.issued_at
    ):
        return Refusal(p.E_REPLACED, "a worker with a newer credential holds this name")
    return None


def expired(worker: WorkerConn, now: float | None = None) -> bool:
    return worker.expires_at is not None and worker.expires_at <= (now or time.time())


def answer_revoke(
    header: dict[str, Any], revocations: Revocations, signing_key: bytes
) -> tuple[list[bytes], tuple[str, str, str] | None]:
    """The reply to a ``revoke`` header, and the (user, worker, instance) revoked if it was
    accepted (for the broker to drop that worker if it is registered)."""
    request_id = header.get("id") or "revoke"
    try:
        verify_service_credential(signing_key, header.get("credential"))
    except AuthError as exc:
        return p.make_revoke_reply(request_id, p.error_info(p.E_AUTH_FAILED, str(exc))), None
    user, worker, instance = header.get("user"), header.get("worker"), header.get("instance")
    until = header.get("until")
    if not all(isinstance(v, str) and v for v in (user, worker, instance)) or not (
        until is None or type(until) in (int, float)
    ):
        error = p.error_info(p.E_BAD_MESSAGE, "revoke needs user, worker, instance and until")
        return p.make_revoke_reply(request_id, error), None
    revocations.revoke(instance, until)  # type: ignore[arg-type]
    return p.make_revoke_reply(request_id), (user, worker, instance)  # type: ignore[return-value]
