"""Who a token belongs to, and the interface every token validator implements.

Validators (:mod:`rexec.token_file`, :mod:`rexec.introspection`) build on this module;
:mod:`rexec.auth` composes them. Tokens never appear in messages; they are hashed for lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol

from rexec.errors import AuthError

# Longer "tokens" are refused before hashing: no real token is this long, and it bounds the work
# an anonymous caller can cause.
MAX_TOKEN_LENGTH = 8192
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to, as the identity provider said."""

    user: str
    groups: tuple[str, ...] = ()


class NotInAllowedGroup(AuthError):
    """The token is valid but its owner is in none of the allowed groups (HTTP 403, not 401)."""


class TokenValidator(Protocol):
    def validate(self, token: str) -> Identity:
        """Return the token's identity; raise ``AuthError`` or ``AuthUnavailable``. Blocks."""
        ...


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: what the token file stores and what caches are keyed by."""
    return sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_token_shape(token: str) -> None:
    """Refuse empty or absurd tokens before any lookup, without echoing them."""
    if not isinstance(token, str) or not token:
        raise AuthError("no token was given; send `Authorization: Bearer <token>`")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError(f"the token is longer than {MAX_TOKEN_LENGTH} characters; check it")
    if not _TOKEN_CHARS.fullmatch(token):
        # Also keeps header-injection characters away from HTTP libraries, whose errors would
        # quote the offending header value (the token) back.
        raise AuthError("the token has spaces or non-printable characters; check it")
