"""Token introspection: ask an HTTP identity provider (``AUTH_API_URL``) who a token belongs to."""

from __future__ import annotations

from typing import Any

import httpx

from rexec.errors import AuthError, AuthUnavailable, ConfigError
from rexec.identity import Identity, check_token_shape

# The answer's user name is the first of these fields that holds a string.
USER_FIELDS = ("sub", "username", "preferred_username")


def _identity_from_answer(answer: Any) -> Identity | None:
    """The identity in an introspection answer, or None when it names no user."""
    if not isinstance(answer, dict):
        return None
    user = next((answer[key] for key in USER_FIELDS if isinstance(answer.get(key), str)), None)
    if not user:
        return None
    groups = answer.get("groups")
    group_tuple = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()
    return Identity(user, group_tuple)


class IntrospectionValidator:
    """Ask an HTTP identity provider who a token belongs to.

    ``GET`` sends ``Authorization: Bearer <token>``; ``POST`` sends JSON ``{"token": token}``.
    """

    def __init__(self, url: str, method: str = "GET", timeout: float = 5.0) -> None:
        method = method.upper()
        if method not in ("GET", "POST"):
            raise ConfigError(f"introspection method must be GET or POST, not {method!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"AUTH_API_URL must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.method = method
        self.timeout = timeout
        # One client for all threads: httpx.Client is thread-safe and reuses connections.
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"IntrospectionValidator({self.url!r}, method={self.method!r})"

    def close(self) -> None:
        self._client.close()

    def _unavailable(self, what: str) -> AuthUnavailable:
        return AuthUnavailable(
            f"identity provider at {self.url} {what}; check that it is running and that "
            "AUTH_API_URL and REXEC_AUTH_METHOD are right, then try again"
        )

    def validate(self, token: str) -> Identity:
        check_token_shape(token)
        try:
            if self.method == "GET":
                response = self._client.get(self.url, headers={"Authorization": f"Bearer {token}"})
            else:
                response = self._client.post(self.url, json={"token": token})
        except httpx.TimeoutException:
            raise self._unavailable(f"did not answer within {self.timeout:g} s") from None
        except httpx.NetworkError as exc:
            # The exception's request carries the token; do not chain it into tracebacks.
            raise self._unavailable(f"could not be reached ({exc or type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            # Other errors may quote the request; name only the kind of failure.
            raise self._unavailable(f"could not be asked ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            raise AuthError(
                "the identity provider refused the token; log in again or get a new one"
            )
        if response.status_code != 200:
            raise self._unavailable(f"answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise self._unavailable("answered with something that is not JSON") from None
        if isinstance(answer, dict) and answer.get("active") is False:
            # RFC 7662 providers answer 200 with {"active": false} for dead tokens.
            raise AuthError(
                "the identity provider refused the token; log in again or get a new one"
            )
        identity = _identity_from_answer(answer)
        if identity is None:
            fields = ", ".join(USER_FIELDS)
            raise self._unavailable(f"answered without a user name (looked for {fields})")
        return identity
