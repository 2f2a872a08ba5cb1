"""Client admission: the token checks behind a ``hello`` and behind an expired session.

Sockets stay in the broker's loop. This module decides, and the loop acts on its decisions:

* ``Admitted``: the token is valid; the client may be bound to that identity.
* ``Denied``: a hello is refused (bad fields, a wrong token, the IdP unreachable).
* ``Revoked``: a connected client's token stopped being valid; its session ends.

A token the validator's cache knows (including a recent refusal) is decided at once. Any other
goes to ``rexec.token_checks``, so a slow IdP never stalls routing and a flood of hellos from one
address neither delays other addresses' nor grows memory: one check per token at a time, a
bounded number waiting per address and in all (beyond that a hello is refused at once with
"retry shortly"), and a connection's superseded hello is cancelled. The outcome comes back
through ``finished()``, which the loop calls after ``wake`` told it a check ended (``ended`` is
then not empty). Tokens never appear in a decision's message.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

from rexec import protocol as p
from rexec.auth import CachingValidator, Identity
from rexec.errors import AuthError, AuthUnavailable
from rexec.token_checks import TokenChecks
from rexec_broker.routing import ClientConn

log = logging.getLogger("rexec.broker")

MAX_TOKEN_CHARS = 8192
# After the IdP could not be reached for a revalidation, the next try comes this much later.
REVALIDATE_RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class Admitted:
    rid: bytes
    token: str = field(repr=False)
    worker: str
    identity: Identity


@dataclass(frozen=True)
class Denied:
    rid: bytes
    code: str
    message: str


@dataclass(frozen=True)
class Revoked:
    rid: bytes
    user: str


Decision = Admitted | Denied | Revoked


@dataclass
class _Check:
    """A token check running on the pool."""

    rid: bytes
    token: str = field(repr=False)
    worker: str
    revalidate: bool
    future: Future[Identity]


class Admission:
    """Decides which client connections are admitted, as whom, without blocking the caller."""

    def __init__(
        self,
        validator: CachingValidator,
        threads: int,
        wake: Callable[[], None],
        cache_ttl: float,
        per_address: int = 16,
        max_waiting: int = 1024,
    ) -> None:
        self._validator = validator
        self._wake = wake
        self._cache_ttl = cache_ttl
        self._checks = TokenChecks(
            validator, threads, per_address, max_waiting, name="rexec-broker-auth"
        )
        # Checks that ended, for ``finished()``. Never replaced: the loop tests it every turn,
        # so it keeps a reference rather than calling a method.
        self.ended: collections.deque[_Check] = collections.deque()
        # Connections whose hello awaits its check. A hello superseded by a newer one, or a
        # connection dropped meanwhile, is forgotten here, and its late outcome is discarded.
        self._hellos: dict[bytes, _Check] = {}

    def hello(self, rid: bytes, header: Mapping[str, Any], source: str = "") -> Decision | None:
        """Decide a ``hello`` from a peer at address ``source`` now, or None when its token is
        being checked (see ``finished``)."""
        token = header.get("token")
        worker = header.get("worker", "default")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            return Denied(rid, p.E_AUTH_FAILED, "hello needs a token")
        if not p.valid_worker_name(worker):
            return Denied(rid, p.E_BAD_MESSAGE, f"worker name must match {p.WORKER_NAME_PATTERN}")
        self.forget(rid)  # a newer hello supersedes the one being checked
        try:
            check = self._submit(rid, token, worker, source, revalidate=False)
        except AuthError as exc:
            return _denied(rid, exc)
        if check.future.done():  # answered from the cache
            return self._decide_hello(check)
        self._hellos[rid] = check
        return None

    def revalidate(self, client: ClientConn) -> None:
        """Check a connected client's token again in the background (its validation is older
        than the cache TTL); if it was revoked, ``finished()`` returns ``Revoked``."""
        client.revalidating = True
        try:
            self._submit(client.rid, client.token, client.worker, f"user:{client.user}", True)
        except AuthUnavailable:
            client.revalidating = False
            client.validated_at = time.monotonic() - self._cache_ttl + REVALIDATE_RETRY_SECONDS

    def forget(self, rid: bytes) -> None:
        """The connection is gone (or said hello again): a check still running for its hello
        decides nothing, and is dropped if it has not started."""
        check = self._hellos.pop(rid, None)
        if check is not None:
            check.future.cancel()

    def finished(self, clients: Mapping[bytes, ClientConn]) -> list[Decision]:
        """Decisions of the checks that ended since the last call, in the order they ended.

        ``clients``: the connected clients, whose revalidation state is updated here.
        """
        decisions: list[Decision] = []
        while self.ended:
            check = self.ended.popleft()
            if check.revalidate:
                client = clients.get(check.rid)
                if client is not None:
                    decision = self._revalidated(check, client)
                    if decision is not None:
                        decisions.append(decision)
            elif self._hellos.get(check.rid) is check:
                del self._hellos[check.rid]
                decisions.append(self._decide_hello(check))
        return decisions

    @property
    def waiting(self) -> int:
        """Hellos whose token check has not ended."""
        return len(self._hellos)

    def close(self) -> None:
        self._checks.close()

    def _submit(self, rid: bytes, token: str, worker: str, source: str, revalidate: bool) -> _Check:
        future = self._checks.submit(token, source)
        check = _Check(rid, token, worker, revalidate, future)

        # Runs at once when the cache answered: a hello is then decided by the caller and its
        # entry here ignored; a revalidation is decided by ``finished`` like any other.
        def done(ended: Future[Identity]) -> None:
            if not ended.cancelled():
                self.ended.append(check)
                self._wake()

        future.add_done_callback(done)
        return check

    def _decide_hello(self, check: _Check) -> Decision:
        try:
            identity = check.future.result()
        except CancelledError:
            return Denied(check.rid, p.E_AUTH_UNAVAILABLE, "the token check was cancelled")
        except Exception as exc:  # AuthError, or a crash of the validator (reported as such)
            return _denied(check.rid, exc)
        return Admitted(check.rid, check.token, check.worker, identity)

    def _revalidated(self, check: _Check, client: ClientConn) -> Revoked | None:
        client.revalidating = False
        try:
            check.future.result()
        except Exception as exc:
            if not isinstance(_as_auth_error(exc), AuthUnavailable):
                return Revoked(client.rid, client.user)
            # Not known to be revoked: keep the session and ask again soon.
            client.validated_at = time.monotonic() - self._cache_ttl + REVALIDATE_RETRY_SECONDS
            return None
        client.validated_at = time.monotonic()
        return None


def _as_auth_error(exc: BaseException) -> AuthError:
    """What a check's exception means for the client: a refusal, or (for anything else, a crash
    of the validator, logged here) the identity source being unavailable."""
    if isinstance(exc, AuthError):
        return exc
    log.error("token validation crashed: %s", type(exc).__name__)
    return AuthUnavailable("token validation failed inside the broker; see its log")


def _denied(rid: bytes, exc: BaseException) -> Denied:
    error = _as_auth_error(exc)
    code = p.E_AUTH_UNAVAILABLE if isinstance(error, AuthUnavailable) else p.E_AUTH_FAILED
    return Denied(rid, code, str(error))
