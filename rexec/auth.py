"""Token validation, shared by the broker and the spawner.

A validator turns a Bearer token into an :class:`Identity` or raises:

* ``AuthError`` when the token is refused (unknown, revoked, owner not in an allowed group);
* ``AuthUnavailable`` when the identity provider could not be asked or answered nonsense, so the
  caller can say "try again later" instead of "your token is wrong".

Validators block (they may do HTTP); callers on an event loop answer from
:meth:`CachingValidator.peek` inline and run :meth:`CachingValidator.validate` in a thread pool on
a miss, so one slow identity provider never stalls other users.

Sources of identity:

* :class:`StaticTokenValidator` — a JSON file of token *hashes*, the embedded default
  (:mod:`rexec.token_file`);
* :class:`IntrospectionValidator` — an HTTP identity provider, ``AUTH_API_URL``
  (:mod:`rexec.introspection`).

This module composes them with a group allow-list and a cache (:func:`make_validator`) and is the
one to import from; :mod:`rexec.identity` holds the shared :class:`Identity` and interface.

Settings come from the environment (:meth:`AuthSettings.from_env`):

=========================  ==============================================================
``AUTH_API_URL``           introspection URL of the identity provider (wins over a file)
``REXEC_AUTH_METHOD``      ``GET`` (Bearer header, default) or ``POST`` (JSON ``{"token"}``)
``REXEC_ALLOWED_GROUPS``   comma-separated groups; when set, users must be in one of them
``REXEC_TOKEN_FILE``       static token file (hashes only), used when no URL is set
``REXEC_AUTH_CACHE_TTL``   seconds a successful validation is reused (default 60)
``REXEC_AUTH_TIMEOUT``     seconds to wait for the identity provider (default 5)
=========================  ==============================================================

Tokens never appear in messages, logs or reprs; caches are keyed by the token's SHA-256.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rexec.errors import AuthError, AuthUnavailable, ConfigError
from rexec.identity import (
    MAX_TOKEN_LENGTH,
    Identity,
    NotInAllowedGroup,
    TokenValidator,
    check_token_shape,
    hash_token,
)
from rexec.introspection import IntrospectionValidator
from rexec.token_file import StaticTokenValidator, create_static_token

__all__ = [
    "AuthSettings",
    "CachingValidator",
    "GroupAllowList",
    "Identity",
    "IntrospectionValidator",
    "NotInAllowedGroup",
    "StaticTokenValidator",
    "TokenValidator",
    "create_static_token",
    "hash_token",
    "make_validator",
]

# Bounds the cache so a stream of random tokens cannot grow memory without limit.
MAX_CACHE_ENTRIES = 10_000


# --- group allow-list and cache --------------------------------------------------------------


class GroupAllowList:
    """Refuse identities that share no group with ``allowed`` (an empty list allows everyone)."""

    def __init__(self, inner: TokenValidator, allowed: Iterable[str]) -> None:
        self.inner = inner
        self.allowed = tuple(allowed)

    def __repr__(self) -> str:
        return f"GroupAllowList({self.inner!r}, allowed={self.allowed!r})"

    def check(self, identity: Identity) -> Identity:
        if self.allowed and not set(identity.groups) & set(self.allowed):
            raise NotInAllowedGroup(
                f"user {identity.user!r} is not in an allowed group; ask an operator to add you "
                f"to one of: {', '.join(self.allowed)}"
            )
        return identity

    def validate(self, token: str) -> Identity:
        return self.check(self.inner.validate(token))

    def close(self) -> None:
        _close(self.inner)


@dataclass
class _CacheEntry:
    expires: float
    identity: Identity | None
    refusal: tuple[type[AuthError], str] | None = None


class CachingValidator:
    """Remember answers: successes for ``ttl`` s, refusals for ``negative_ttl`` s.

    Outages (``AuthUnavailable``) are never cached, so the next call asks again. Thread-safe.
    """

    def __init__(
        self,
        inner: TokenValidator,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = MAX_CACHE_ENTRIES,
    ) -> None:
        self.inner = inner
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, _CacheEntry] = {}

    def __repr__(self) -> str:
        ttls = f"ttl={self.ttl:g}, negative_ttl={self.negative_ttl:g}"
        return f"CachingValidator({self.inner!r}, {ttls})"

    def _lookup(self, key: str) -> _CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires <= time.monotonic():
                del self._entries[key]
                return None
            return entry

    def peek(self, token: str) -> Identity | None:
        """A fresh cached success for ``token``, without asking anyone; None otherwise."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        entry = self._lookup(hash_token(token))
        return entry.identity if entry is not None else None

    def lookup(self, token: str) -> Identity | AuthError | None:
        """What the cache knows about ``token`` without asking anyone: the identity, the
        refusal (an exception to raise; refusals are kept ``negative_ttl`` s), or None."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        entry = self._lookup(hash_token(token))
        if entry is None:
            return None
        if entry.identity is not None:
            return entry.identity
        if entry.refusal is not None:
            kind, message = entry.refusal
            return kind(message)
        return None

    def validate(self, token: str) -> Identity:
        check_token_shape(token)
        key = hash_token(token)
        entry = self._lookup(key)
        if entry is not None:
            if entry.identity is not None:
                return entry.identity
            if entry.refusal is not None:
                kind, message = entry.refusal
                raise kind(message)
        try:
            identity = self.inner.validate(token)
        except AuthUnavailable:
            raise
        except AuthError as exc:
            if self.negative_ttl > 0:
                refusal = (type(exc), str(exc))
                self._store(key, _CacheEntry(time.monotonic() + self.negative_ttl, None, refusal))
            raise
        if self.ttl > 0:
            self._store(key, _CacheEntry(time.monotonic() + self.ttl, identity))
        return identity

    def _store(self, key: str, entry: _CacheEntry) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                for stale in [k for k, e in self._entries.items() if e.expires <= now]:
                    del self._entries[stale]
                while len(self._entries) >= self.max_entries:
                    # Dicts keep insertion order: drop the oldest.
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        _close(self.inner)


def _close(validator: object) -> None:
    close = getattr(validator, "close", None)
    if callable(close):
        close()


# --- settings --------------------------------------------------------------------------------


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


@dataclass(frozen=True)
class AuthSettings:
    """Where identities come from and who may use the service."""

    token_file: Path | None = None
    api_url: str | None = None
    api_method: str = "GET"
    allowed_groups: tuple[str, ...] = field(default=())
    cache_ttl: float = 60.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        method = str(self.api_method).upper()
        if method not in ("GET", "POST"):
            raise ConfigError(
                f"REXEC_AUTH_METHOD must be GET or POST, not {self.api_method!r}; use GET for "
                'a Bearer header or POST for a JSON body {"token": ...}'
            )
        object.__setattr__(self, "api_method", method)
        object.__setattr__(self, "allowed_groups", tuple(self.allowed_groups))
        if self.token_file is not None:
            object.__setattr__(self, "token_file", Path(self.token_file).expanduser())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AuthSettings:
        """Settings from environment variables; ``overrides`` that are not None win."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        if source.get("AUTH_API_URL", "").strip():
            values["api_url"] = source["AUTH_API_URL"].strip()
        if source.get("REXEC_AUTH_METHOD", "").strip():
            values["api_method"] = source["REXEC_AUTH_METHOD"].strip()
        if source.get("REXEC_TOKEN_FILE", "").strip():
            values["token_file"] = Path(source["REXEC_TOKEN_FILE"].strip())
        groups = source.get("REXEC_ALLOWED_GROUPS", "")
        values["allowed_groups"] = tuple(g.strip() for g in groups.split(",") if g.strip())
        for key, name in (("cache_ttl", "REXEC_AUTH_CACHE_TTL"), ("timeout", "REXEC_AUTH_TIMEOUT")):
            number = _env_float(source, name)
            if number is not None:
                values[key] = number
        values.update({key: value for key, value in overrides.items() if value is not None})
        return replace(cls(), **values)


def make_validator(settings: AuthSettings) -> CachingValidator:
    """The validator the settings describe: IdP or token file, group allow-list, cache."""
    inner: TokenValidator
    if settings.api_url:
        inner = IntrospectionValidator(settings.api_url, settings.api_method, settings.timeout)
    elif settings.token_file is not None:
        inner = StaticTokenValidator(settings.token_file)
    else:
        raise ConfigError(
            "no source of identities: set AUTH_API_URL to your identity provider's introspection "
            "URL, or REXEC_TOKEN_FILE to a static token file (`rexec up` creates one)"
        )
    if settings.allowed_groups:
        # Inside the cache, so cached identities were all checked and refusals are cached too.
        inner = GroupAllowList(inner, settings.allowed_groups)
    return CachingValidator(inner, ttl=settings.cache_ttl)
