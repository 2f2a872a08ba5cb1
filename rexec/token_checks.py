"""Token checks off the caller's thread, fair between sources and bounded: what the broker's
hellos and the spawner's requests wait for when a token is not in the cache.

A slow identity provider must not let one peer delay everyone, nor let a flood of bad tokens grow
memory. So:

* concurrent checks of one token share one call to the identity provider;
* answers the cache holds (successes, and refusals for a few seconds) come back at once;
* each *source* (a peer's address, say) may have at most ``per_source`` checks waiting, and all
  sources together ``max_waiting``; beyond that a check is refused at once with
  ``ChecksBusy`` (an ``AuthUnavailable``: "try again shortly");
* threads take waiting checks from the sources in turn, and one source never holds more than
  ``per_source_running`` threads, so another source's check starts within one provider round
  trip however many checks the first one queued;
* a waiter that stops caring (a hello superseded by a newer one, a closed connection) cancels
  its future; a check nobody waits for any more is dropped before it starts.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from rexec.auth import CachingValidator, Identity
from rexec.errors import AuthError, AuthUnavailable
from rexec.identity import hash_token

log = logging.getLogger(__name__)


class ChecksBusy(AuthUnavailable):
    """Too many token checks are waiting (from this source, or in all)."""


@dataclass
class _Job:
    key: str
    token: str = field(repr=False)
    source: str
    waiters: list[Future[Identity]] = field(default_factory=list)
    started: bool = False


class TokenChecks:
    """Validates tokens on ``threads`` threads with the rules of the module docstring."""

    def __init__(
        self,
        validator: CachingValidator,
        threads: int = 8,
        per_source: int = 16,
        max_waiting: int = 1024,
        per_source_running: int | None = None,
        name: str = "rexec-token-check",
    ) -> None:
        self.validator = validator
        self.per_source = per_source
        self.max_waiting = max_waiting
        self.per_source_running = per_source_running or max(1, threads // 2)
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}  # by token hash, waiting or running
        self._queues: dict[str, collections.deque[_Job]] = {}  # waiting, by source
        self._turns: collections.deque[str] = collections.deque()  # sources with waiting jobs
        self._waiting_by_source: collections.Counter[str] = collections.Counter()
        self._running_by_source: collections.Counter[str] = collections.Counter()
        self._waiting = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{index}", daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, token: str, source: str) -> Future[Identity]:
        """A future of the identity behind ``token`` (or its ``AuthError``), for a caller at
        ``source``. Raises ``ChecksBusy`` at once when the limits are reached."""
        future: Future[Identity] = Future()
        cached = self.validator.lookup(token)
        if isinstance(cached, Identity):
            future.set_result(cached)
            return future
        if isinstance(cached, AuthError):
            future.set_exception(cached)
            return future
        key = hash_token(token)
        with self._lock:
            if self._closed:
                raise ChecksBusy("the service is shutting down; try again once it is back")
            job = self._jobs.get(key)
            if job is not None:  # the same token is being checked: wait for that answer
                job.waiters.append(future)
            else:
                self._enqueue(key, token, source, future)
        future.add_done_callback(lambda done: self._cancelled(done, key))
        return future

    def _enqueue(self, key: str, token: str, source: str, future: Future[Identity]) -> None:
        """Queue a new job; called with the lock held."""
        if self._waiting_by_source[source] >= self.per_source:
            raise ChecksBusy(
                "too many token checks are waiting for your address; retry in a few seconds"
            )
        if self._waiting >= self.max_waiting:
            raise ChecksBusy("the identity provider is busy; retry in a few seconds")
        job = self._jobs[key] = _Job(key, token, source, [future])
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = collections.deque()
            self._turns.append(source)
        queue.append(job)
        self._waiting_by_source[source] += 1
        self._waiting += 1
        self._lock.notify()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def close(self) -> None:
        with self._lock:
            self._closed = True
            jobs = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._turns.clear()
            self._lock.notify_all()
        for job in jobs:
            for waiter in job.waiters:
                waiter.cancel()

    # -- threads ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._next_job()
                while job is None:
                    if self._closed:
                        return
                    self._lock.wait()
                    job = self._next_job()
            try:
                identity = self.validator.validate(job.token)
            except BaseException as exc:  # AuthError, or a crash the caller reports
                self._finish(job, None, exc)
            else:
                self._finish(job, identity, None)

    def _next_job(self) -> _Job | None:
        """The next waiting job, taking sources in turn; called with the lock held."""
        for _ in range(len(self._turns)):
            source = self._turns[0]
            self._turns.rotate(-1)
            if self._running_by_source[source] >= self.per_source_running:
                continue
            queue = self._queues[source]
            job = queue.popleft()
            if not queue:
                del self._queues[source]
                self._turns.remove(source)
            self._waiting_by_source[source] -= 1
            if not self._waiting_by_source[source]:
                del self._waiting_by_source[source]
            self._waiting -= 1
            job.started = True
            self._running_by_source[source] += 1
            return job
        return None

    def _finish(self, job: _Job, identity: Identity | None, error: BaseException | None) -> None:
        with self._lock:
            self._jobs.pop(job.key, None)
            self._running_by_source[job.source] -= 1
            if not self._running_by_source[job.source]:
                del self._running_by_source[job.source]
            waiters, job.waiters = job.waiters, []
            self._lock.notify()  # a source may be below its running limit again
        for waiter in waiters:
            try:
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(identity)  # type: ignore[arg-type]
            except InvalidStateError:
                pass  # cancelled meanwhile

    def _cancelled(self, future: Future[Identity], key: str) -> None:
        """A waiter cancelled its future: drop its job if nobody else waits and it has not
        started."""
        if not future.cancelled():
            return
        with self._lock:
            job = self._jobs.get(key)
            if job is None or future not in job.waiters:
                return
            job.waiters.remove(future)
            if not job.waiters and not job.started:
                self._drop(job)
                del self._jobs[key]

    def _drop(self, job: _Job) -> None:
        queue = self._queues.get(job.source)
        if queue is None:
            return
        try:
            queue.remove(job)
        except ValueError:
            return
        if not queue:
            del self._queues[job.source]
            self._turns.remove(job.source)
        self._waiting_by_source[job.source] -= 1
        if not self._waiting_by_source[job.source]:
            del self._waiting_by_source[job.source]
        self._waiting -= 1
