"""Who is calling: the identity behind a request's ``Authorization: Bearer`` header.

Shared by the routes (through a dependency) and by the body guard, which must authenticate a
request before reading its body; both answer a missing or refused token the same way: 401 with a
Bearer challenge, 403 for a user outside the allowed groups, 503 when the identity provider
cannot be asked, or when too many checks wait already (``rexec.token_checks``: one check per
token at a time, a bounded number per client address and in all, addresses served in turn).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from rexec.auth import Identity, NotInAllowedGroup
from rexec.errors import AuthError, AuthUnavailable
from rexec.token_checks import TokenChecks

log = logging.getLogger(__name__)

# Where the body guard leaves the identity it validated, in the request's state, so the route
# does not validate the same token a second time.
IDENTITY_STATE_KEY = "rexec_identity"


def unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": challenge})


def bearer_token(header: str | None) -> str:
    """The token in an ``Authorization`` header; 401 with the fix if there is none."""
    if not header:
        raise unauthorized(
            "no token: send the header `Authorization: Bearer <token>` (run `rexec up` for a "
            "local token, or log in to your identity provider)"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(
            "malformed Authorization header: it must be `Bearer <token>`", "invalid_request"
        )
    return token


async def authenticate(checks: TokenChecks, header: str | None, source: str) -> Identity:
    """The identity behind an ``Authorization`` header sent from address ``source``, or the
    HTTPException to answer with."""
    token = bearer_token(header)
    try:
        future = checks.submit(token, source)
        if future.done():  # answered from the cache
            return future.result()
        # Cancelled with the request (the client went away): a check not started is dropped.
        return await asyncio.wrap_future(future)
    except AuthUnavailable as exc:
        log.warning("cannot validate a token: %s", exc)
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from None
    except NotInAllowedGroup as exc:
        raise HTTPException(403, detail=str(exc)) from None
    except AuthError as exc:
        raise unauthorized(str(exc), "invalid_token") from None


def client_address(scope: Mapping[str, Any]) -> str:
    """The address a request came from, as the token checks group callers."""
    client = scope.get("client")
    if isinstance(client, tuple | list) and client:
        return str(client[0])
    return "unknown"
