"""Static tokens: a JSON file of token hashes, the identity source of the embedded local stack.

Format (the file is created 0600 and holds only SHA-256 hashes, never tokens)::

    {"tokens": [{"sha256": "<hex of sha256(token)>", "user": "alice", "groups": ["science"]}]}

The validator re-reads the file when it changes, so adding or revoking a token needs no restart.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexec.credentials import write_secret_file
from rexec.errors import AuthError, AuthUnavailable, ConfigError
from rexec.identity import Identity, check_token_shape, hash_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _StaticEntry:
    digest: bytes
    identity: Identity


def _read_token_file(path: Path) -> list[dict[str, Any]]:
    """The raw entries of a token file; ``ConfigError`` (with the fix) for anything wrong."""
    fix = "create it with `rexec up` or rexec.auth.create_static_token(), or set REXEC_TOKEN_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist; {fix}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read token file {path} ({exc.strerror}); check its permissions or {fix}"
        ) from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(
            f'token file {path} is not valid JSON; expected {{"tokens": [...]}}; {fix}'
        ) from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        raise ConfigError(f'token file {path} has no "tokens" list; {fix}')
    return tokens


def _parse_entries(path: Path, raw: Iterable[Any]) -> list[_StaticEntry]:
    entries = []
    for index, item in enumerate(raw):
        where = f"entry {index} of token file {path}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is not an object; fix or remove it")
        digest, user, groups = item.get("sha256"), item.get("user"), item.get("groups", [])
        try:
            digest_bytes = bytes.fromhex(digest) if isinstance(digest, str) else b""
        except ValueError:
            digest_bytes = b""
        if len(digest_bytes) != 32:
            raise ConfigError(f'{where} needs "sha256": the 64-hex-digit hash of the token')
        if not isinstance(user, str) or not user:
            raise ConfigError(f'{where} needs a non-empty "user"')
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f'{where} has "groups" that is not a list of strings')
        entries.append(_StaticEntry(digest_bytes, Identity(user, tuple(groups))))
    return entries


class StaticTokenValidator:
    """Tokens listed by hash in a JSON file; the file is re-read when it changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._entries: list[_StaticEntry] = []
        self._reload()

    def __repr__(self) -> str:
        return f"StaticTokenValidator({str(self.path)!r})"

    def _reload(self) -> None:
        """Re-read the file if its mtime, size or inode changed (writes replace it atomically)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"token file {self.path} does not exist; create it with `rexec up` or "
                "rexec.auth.create_static_token(), or set REXEC_TOKEN_FILE"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read token file {self.path} ({exc.strerror}); check its permissions"
            ) from None
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if signature == self._signature:
                return
            entries = _parse_entries(self.path, _read_token_file(self.path))
            self._entries, self._signature = entries, signature
        log.info("loaded %d token(s) from %s", len(entries), self.path)

    def validate(self, token: str) -> Identity:
        check_token_shape(token)
        try:
            self._reload()
        except ConfigError as exc:
            # At run time a broken file is an outage of the identity source, not a bad token.
            raise AuthUnavailable(str(exc)) from None
        digest = bytes.fromhex(hash_token(token))
        found: Identity | None = None
        # Compare against every entry so the time taken does not depend on where a match is.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.identity
        if found is None:
            raise AuthError("the token is not valid; check it or ask for a new one")
        return found


def create_static_token(path: Path | str, user: str, groups: Iterable[str] = ()) -> str:
    """Add a new token for ``user`` to the token file (created 0600) and return the raw token.

    Only the token's hash is stored; the returned token cannot be recovered later.
    """
    target = Path(path)
    if not isinstance(user, str) or not user:
        raise ConfigError("a token needs a non-empty user name")
    group_list = [str(group) for group in groups]
    raw = _read_token_file(target) if target.exists() else []
    _parse_entries(target, raw)  # refuse to extend a file that is already broken
    token = secrets.token_urlsafe(32)
    raw.append({"sha256": hash_token(token), "user": user, "groups": group_list})
    # Write a sibling and rename it over the file, so a validator never reads a half-written file.
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    write_secret_file(partial, json.dumps({"tokens": raw}, indent=2).encode() + b"\n")
    os.replace(partial, target)
    return token
