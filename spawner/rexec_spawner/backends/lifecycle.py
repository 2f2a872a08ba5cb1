"""What every backend does over a worker's life besides starting and stopping it: keep its
credential valid, take it back when the worker goes, and notice a worker that stopped responding.

* **Credentials expire** (``REXEC_WORKER_CREDENTIAL_TTL``) and are renewed at half their life:
  the backend writes a new one (same instance id, later expiry) where the worker reads it, and the
  worker registers again with it. A copy taken from a worker stops working within one TTL.
* **Deleting a worker revokes its credential** at the broker at once (the ``revoke`` service
  message): the instance is refused from then on and dropped if it is still connected.
* **A hung worker is replaced.** The broker hears from a healthy worker every second (its I/O
  thread pings while idle). One that the broker has not heard from for ``hung_after`` seconds, or
  no longer has, is hung when the backend's own signal agrees (for local workers: their status
  file, rewritten every few seconds, went stale too). A hung worker is stopped and reported
  failed with the reason, so the next call starts a new one instead of waiting for it.
  A backend that has no signal of its own (a worker pod's process is out of the spawner's sight)
  keeps a :class:`HangWatch` per worker instead: the broker's silence counts as it is, since the
  broker measures it; the broker not listing a worker that was registered counts only once that
  has lasted ``hung_after`` seconds, so a broker restart (workers register again within seconds)
  is never taken for a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rexec.credentials import make_worker_credential
from rexec_spawner.activity import ActivityUnavailable, BrokerActivity, WorkerActivity

log = logging.getLogger(__name__)

DEFAULT_CREDENTIAL_TTL = 12 * 3600.0
DEFAULT_HUNG_AFTER = 30.0


@dataclass
class Lease:
    """A worker's current credential and when to renew it."""

    credential: str
    expires_at: float
    renew_at: float


def issue_lease(
    signing_key: bytes, user: str, name: str, instance: str, ttl: float, now: float | None = None
) -> Lease:
    """A credential for worker ``instance``, valid ``ttl`` seconds, to renew at half of that."""
    issued = time.time() if now is None else now
    credential = make_worker_credential(signing_key, user, name, ttl, issued, instance)
    return Lease(credential, issued + ttl, issued + ttl / 2)


def renewal_due(lease: Lease | None, now: float | None = None) -> bool:
    return lease is not None and (time.time() if now is None else now) >= lease.renew_at


def hung(row: WorkerActivity | None, registered_before: bool, hung_after: float) -> bool:
    """Whether the broker's view says the worker stopped responding: it was registered and is
    gone, or the broker has heard nothing from it for ``hung_after`` seconds."""
    if row is None:
        return registered_before
    return row.silent_seconds >= hung_after


@dataclass
class HangWatch:
    """Whether one worker hung, judged from the broker's answers alone (module docstring)."""

    hung_after: float
    absent_since: float | None = None  # when the broker was first seen not to list the worker

    def observe(
        self,
        known: bool,
        row: WorkerActivity | None,
        registered_before: bool,
        now: float | None = None,
    ) -> bool:
        """One look at the broker's view: ``known`` False when the broker could not be asked
        (nothing is concluded, and an absence counts again from the next answer), ``row`` the
        worker's row or None. True when the worker is hung."""
        if self.hung_after <= 0 or not known:
            self.absent_since = None
            return False
        if row is not None:
            self.absent_since = None
            return hung(row, registered_before, self.hung_after)
        if not registered_before:
            return False  # still starting: the ready timeout covers that
        at = time.time() if now is None else now
        if self.absent_since is None:
            self.absent_since = at
        return at - self.absent_since >= self.hung_after


def find_row(
    rows: Iterable[WorkerActivity], user: str, name: str, instance: str
) -> WorkerActivity | None:
    """The row of worker ``instance`` among the broker's rows, or None. A row without an
    instance (a credential that names none) is taken for it: the broker has one per name."""
    for row in rows:
        if (
            row.user == user
            and row.worker == name
            and (not row.instance or row.instance == instance)
        ):
            return row
    return None


async def broker_row(
    broker: BrokerActivity | None, user: str, name: str, instance: str
) -> tuple[bool, WorkerActivity | None]:
    """``(known, row)``: the broker's row for this worker instance (None if it has none);
    ``known`` is False when the broker could not be asked, and then nothing may be concluded."""
    if broker is None:
        return False, None
    try:
        rows = await broker.fetch(user)
    except ActivityUnavailable as exc:
        log.warning("cannot ask the broker about worker %r of user %r: %s", name, user, exc)
        return False, None
    return True, find_row(rows, user, name, instance)


async def revoke(
    broker: BrokerActivity | None, user: str, name: str, instance: str, until: float | None
) -> None:
    """Revoke a deleted worker's credential at the broker; a broker that cannot be reached is
    logged (the credential still expires by itself)."""
    if broker is None:
        return
    try:
        await broker.revoke_async(user, name, instance, until)
    except ActivityUnavailable as exc:
        log.warning(
            "could not revoke the credential of worker %r of user %r (%s); it stays valid until "
            "it expires",
            name,
            user,
            exc,
        )
