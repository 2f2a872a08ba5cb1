"""The body guard: a request's token is checked before any byte of its body is read, and bodies
are capped in size.

FastAPI reads and parses a route's body before it runs the route's dependencies, the Bearer
check among them, so without this guard anyone who reaches the spawner could make it hold an
arbitrarily large body in memory. This pure ASGI middleware runs first instead:

* requests without a body (no ``Content-Length`` or ``Content-Length: 0``, no
  ``Transfer-Encoding``) pass untouched; the routes authenticate them as before;
* any other request is authenticated from its headers alone, with the same answers as the
  routes (401, 403, 503); the identity is left in the request's state for the route;
* a declared ``Content-Length`` over the cap is refused with 413 before reading; a chunked body
  is counted while it is read and cut off with 413 as soon as it passes the cap.

A refusal sent before the body was read closes the connection, so the server never receives the
rest of a body nobody will read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rexec.token_checks import TokenChecks
from rexec_spawner.authentication import IDENTITY_STATE_KEY, authenticate, client_address

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """Raised into the application when the body it reads passes the cap."""


class BodyGuard:
    """Authenticates requests that carry a body before reading it; caps the body's size."""

    def __init__(self, app: ASGIApp, checks: TokenChecks, max_body_bytes: int) -> None:
        self.app = app
        self.checks = checks
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        chunked = "transfer-encoding" in headers
        declared = headers.get("content-length")
        if not chunked and declared in (None, "0"):
            await self.app(scope, receive, send)
            return
        try:
            length = _declared_length(declared)
            identity = await authenticate(
                self.checks, headers.get("authorization"), client_address(scope)
            )
        except HTTPException as exc:
            await _refuse(send, exc.status_code, str(exc.detail), exc.headers)
            return
        if length is not None and length > self.max_body_bytes:
            log.info("refused a %d-byte request body of user %r", length, identity.user)
            await _refuse(send, 413, self._too_large(f"a request body of {length} bytes"))
            return
        scope.setdefault("state", {})[IDENTITY_STATE_KEY] = identity
        body = _CountedBody(receive, send, self.max_body_bytes)
        try:
            await self.app(scope, body.receive, body.send)
        except BodyTooLarge:
            pass  # the application let it through; the answer is ours anyway
        if body.exceeded:
            log.info("cut off a request body of user %r over the cap", identity.user)
            if not body.response_started:
                await _refuse(send, 413, self._too_large("the request body"))

    def _too_large(self, what: str) -> str:
        return (
            f"{what} is over {self.max_body_bytes} bytes, the most this spawner accepts; send "
            "less (a requirements file may hold at most 64 KiB), or ask the operator to raise "
            "REXEC_SPAWNER_MAX_BODY_BYTES"
        )


class _CountedBody:
    """One request's ``receive`` and ``send``, counting the body and stopping it at the cap."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        self.exceeded = False
        self.response_started = False

    async def receive(self) -> Message:
        if self.exceeded:
            raise BodyTooLarge()
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self.exceeded = True
                raise BodyTooLarge()
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            # Whatever the application answers to a body it could not read (FastAPI turns the
            # exception into a 400) is dropped: the client gets the 413 that says why.
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


def _declared_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise HTTPException(400, detail="the Content-Length header must be a number of bytes")
    return int(value)


async def _refuse(
    send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    """Answer ``{"detail": ...}`` with ``status`` and close the connection, reading nothing."""
    body = json.dumps({"detail": detail}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
