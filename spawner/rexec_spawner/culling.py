"""Idle culling: delete workers that have had nothing to do for longer than a TTL.

Activity comes from the broker (:mod:`rexec_spawner.activity`), which sees every request: a
worker with a request in flight (a cell or call running, however silently, or a generator being
iterated) is busy, and a worker's idle time counts from the end of its last request. Connected
clients that send nothing do not count. Before deleting, the culler asks once more about that
one user, so a request that started in between saves the worker.

Off unless ``REXEC_IDLE_TIMEOUT`` is set (for every backend). Limits: a worker the broker does
not know (not registered, or the broker restarted and it has not re-registered yet) is never
culled on that pass; after a broker restart idle time counts from the re-registration.
"""

from __future__ import annotations

import asyncio
import logging

from rexec.errors import SpawnError
from rexec_spawner.activity import ActivityUnavailable, BrokerActivity, WorkerActivity
from rexec_spawner.backends.base import WorkerBackend

log = logging.getLogger(__name__)


def pick_idle(rows: list[WorkerActivity], idle_timeout: float) -> list[WorkerActivity]:
    """The workers idle past ``idle_timeout`` seconds with nothing in flight."""
    return [row for row in rows if row.inflight == 0 and row.idle_seconds >= idle_timeout]


class IdleCuller:
    def __init__(
        self,
        backend: WorkerBackend,
        activity: BrokerActivity,
        idle_timeout: float,
        interval: float,
    ) -> None:
        if idle_timeout <= 0 or interval <= 0:
            raise ValueError("idle_timeout and interval must be positive")
        self.backend = backend
        self.activity = activity
        self.idle_timeout = idle_timeout
        self.interval = interval

    async def cull_once(self) -> list[tuple[str, str]]:
        """One pass; returns the (user, worker) pairs deleted."""
        culled = []
        for row in pick_idle(await self.activity.fetch(), self.idle_timeout):
            fresh = [r for r in await self.activity.fetch(row.user) if r.worker == row.worker]
            if not pick_idle(fresh, self.idle_timeout):
                continue
            try:
                deleted = await self.backend.delete(row.user, row.worker)
            except SpawnError as exc:
                # One worker the backend will not delete (say, of a user it does not serve)
                # must not stop the pass for the others.
                log.warning("cannot cull worker %r of user %r: %s", row.worker, row.user, exc)
                continue
            if deleted:
                log.info(
                    "culled worker %r of user %r after %.0f s idle",
                    row.worker,
                    row.user,
                    fresh[0].idle_seconds,
                )
                culled.append((row.user, row.worker))
        return culled

    async def run(self) -> None:
        """Cull every ``interval`` seconds until cancelled; errors are logged, never fatal."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.cull_once()
            except asyncio.CancelledError:
                raise
            except ActivityUnavailable as exc:
                log.warning("idle culling skipped: %s", exc)
            except Exception:
                log.exception("idle culling pass failed")
