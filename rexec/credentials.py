"""Worker credentials: a statement "this worker acts for user U", signed by the spawner.

The spawner and the broker share a signing key. The spawner issues one credential per worker;
the broker verifies it when the worker registers and binds the connection to that one user.
Verification needs no call to the spawner, so a restarted broker accepts re-registering workers.

Format: ``rxw1.<base64url(json claims)>.<base64url(hmac-sha256)>``.

A second kind, the *service credential* (``rxs1...``), lets the spawner ask the broker about
its workers (the activity query). It is signed with the same key but over a different prefix,
always expires within minutes, and names a role instead of a user: a service credential is
never accepted as a worker's, and a worker credential never as a service's.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from rexec.errors import AuthError, ConfigError

_PREFIX = "rxw1"
_SERVICE_PREFIX = "rxs1"
KEY_BYTES = 32
SERVICE_ROLES = frozenset({"spawner"})
MAX_SERVICE_TTL = 3600.0


@dataclass(frozen=True)
class WorkerClaims:
    user: str
    worker: str
    instance: str
    issued_at: float
    expires_at: float | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_worker_credential(
    key: bytes,
    user: str,
    worker: str,
    ttl: float | None = None,
    now: float | None = None,
    instance: str | None = None,
) -> str:
    """Sign a credential for one worker of one user. ``ttl`` None means no expiry.

    ``instance`` names the worker the spawner started (a random id if not given): a renewed
    credential keeps it, and revoking it (``rexec_broker.registration``) ends that worker.
    """
    issued = time.time() if now is None else now
    claims = {
        "u": user,
        "w": worker,
        "i": instance or secrets.token_hex(8),
        "iat": round(issued, 3),
        "exp": None if ttl is None else int(issued + ttl),
    }
    return _sign(key, _PREFIX, claims)


def _sign(key: bytes, prefix: str, claims: dict[str, Any]) -> str:
    """``prefix.body.signature``: the JSON claims and their HMAC-SHA256 under ``key``."""
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(key, f"{prefix}.{body}".encode(), sha256).digest())
    return f"{prefix}.{body}.{signature}"


def _verified_claims(
    key: bytes, prefix: str, credential: object, max_chars: int, what: str, mismatch_hint: str
) -> dict[str, Any]:
    """The claims of a credential made by ``_sign`` with ``prefix``; the signature is checked
    before the body is parsed. Raises ``AuthError`` naming ``what`` otherwise."""
    if not isinstance(credential, str) or len(credential) > max_chars:
        raise AuthError(f"{what} is malformed")
    parts = credential.split(".")
    if len(parts) != 3 or parts[0] != prefix:
        raise AuthError(f"{what} is malformed")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), sha256).digest()
    try:
        given = _unb64(parts[2])
    except (ValueError, TypeError) as exc:
        raise AuthError(f"{what} is malformed") from exc
    if not hmac.compare_digest(expected, given):
        raise AuthError(f"{what} signature is invalid ({mismatch_hint})")
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, TypeError) as exc:
        raise AuthError(f"{what} is malformed") from exc
    if not isinstance(claims, dict):
        raise AuthError(f"{what} is malformed")
    return claims


def verify_worker_credential(key: bytes, credential: str, now: float | None = None) -> WorkerClaims:
    """Return the claims of a valid credential; raise ``AuthError`` otherwise."""
    claims = _verified_claims(
        key, _PREFIX, credential, 4096, "worker credential", "issued by another spawner?"
    )
    if not isinstance(claims.get("u"), str):
        raise AuthError("worker credential is malformed")
    expires = claims.get("exp")
    current = time.time() if now is None else now
    if expires is not None and current > expires:
        raise AuthError("worker credential has expired; ask the spawner for a new worker")
    return WorkerClaims(
        user=claims["u"],
        worker=str(claims.get("w", "default")),
        instance=str(claims.get("i", "")),
        issued_at=float(claims.get("iat", 0)),
        expires_at=None if expires is None else float(expires),
    )


def credential_expiry(credential: str) -> float | None:
    """When a credential expires, read without checking its signature: for its holder to plan
    a renewal, never to decide anything about trust. None if it has no expiry or is malformed."""
    try:
        claims = json.loads(_unb64(credential.split(".")[1]))
        expires = claims.get("exp")
    except (ValueError, TypeError, IndexError, AttributeError):
        return None
    return float(expires) if isinstance(expires, int | float) else None


@dataclass(frozen=True)
class ServiceClaims:
    role: str
    issued_at: float
    expires_at: float


def make_service_credential(
    key: bytes, role: str = "spawner", ttl: float = 300.0, now: float | None = None
) -> str:
    """Sign a short-lived credential for a Rexec service (``role``), not for any user."""
    if role not in SERVICE_ROLES:
        raise ValueError(f"unknown service role {role!r}")
    if not 0 < ttl <= MAX_SERVICE_TTL:
        raise ValueError(f"a service credential lives 0-{MAX_SERVICE_TTL:g} s, not {ttl!r}")
    issued = time.time() if now is None else now
    claims = {"r": role, "n": secrets.token_hex(8), "iat": int(issued), "exp": int(issued + ttl)}
    return _sign(key, _SERVICE_PREFIX, claims)


def verify_service_credential(
    key: bytes, credential: object, now: float | None = None
) -> ServiceClaims:
    """Return the claims of a valid, unexpired service credential; raise ``AuthError`` otherwise."""
    claims = _verified_claims(
        key, _SERVICE_PREFIX, credential, 1024, "service credential", "issued with another key?"
    )
    if claims.get("r") not in SERVICE_ROLES:
        raise AuthError("service credential names no known role")
    expires = claims.get("exp")
    if not isinstance(expires, int | float):
        raise AuthError("service credential has no expiry")
    current = time.time() if now is None else now
    if current > expires:
        raise AuthError("service credential has expired; sign a new one")
    return ServiceClaims(
        role=str(claims["r"]), issued_at=float(claims.get("iat", 0)), expires_at=float(expires)
    )


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only (0600) before any secret is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def load_key(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the worker signing key {path}: {exc.strerror}") from exc
    try:
        key = bytes.fromhex(data.decode())
    except ValueError as exc:
        raise ConfigError(f"worker signing key {path} must hold hex; regenerate it") from exc
    if len(key) < 16:
        raise ConfigError(f"worker signing key {path} is too short; regenerate it")
    return key


def create_key_file(path: Path) -> bytes:
    key = generate_key()
    write_secret_file(path, key.hex().encode() + b"\n")
    return key
