"""Who is calling: the identity behind a request's ``Authorization: Bearer`` header.

Shared by the routes (through a dependency) and by the body guard, which must authenticate a
request before reading its body; both answer a missing or refused token the same way: 401 with a
Bearer challenge, 403 for a user outside the allowed groups, 503 when the identity provider
cannot be asked.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from rexec.auth import CachingValidator, Identity, NotInAllowedGroup
from rexec.errors import AuthError, AuthUnavailable

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


async def authenticate(validator: CachingValidator, header: str | None) -> Identity:
    """The identity behind an ``Authorization`` header, or the HTTPException to answer with."""
    token = bearer_token(header)
    cached = validator.peek(token)
    if cached is not None:
        return cached
    try:
        return await run_in_threadpool(validator.validate, token)
    except AuthUnavailable as exc:
        log.warning("cannot validate a token: %s", exc)
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from None
    except NotInAllowedGroup as exc:
        raise HTTPException(403, detail=str(exc)) from None
    except AuthError as exc:
        raise unauthorized(str(exc), "invalid_token") from None
