"""Service credentials (the spawner's activity query) never pass as worker credentials, and back."""

from __future__ import annotations

import pytest

from rexec.credentials import (
    generate_key,
    make_service_credential,
    make_worker_credential,
    verify_service_credential,
    verify_worker_credential,
)
from rexec.errors import AuthError


def test_round_trip_and_expiry():
    key = generate_key()
    claims = verify_service_credential(key, make_service_credential(key, ttl=60, now=1000.0), 1030)
    assert claims.role == "spawner" and claims.expires_at == 1060
    with pytest.raises(AuthError, match="expired"):
        verify_service_credential(key, make_service_credential(key, ttl=60, now=1000.0), 1061)


def test_kinds_are_not_interchangeable():
    key = generate_key()
    service = make_service_credential(key)
    worker = make_worker_credential(key, "alice", "default")
    with pytest.raises(AuthError):
        verify_worker_credential(key, service)
    with pytest.raises(AuthError):
        verify_service_credential(key, worker)
    # Same body and signature under the other prefix: the signature covers the prefix.
    forged = "rxw1." + service.split(".", 1)[1]
    with pytest.raises(AuthError, match="signature"):
        verify_worker_credential(key, forged)


def test_wrong_key_unknown_role_and_bad_ttl():
    key = generate_key()
    with pytest.raises(AuthError, match="signature"):
        verify_service_credential(generate_key(), make_service_credential(key))
    with pytest.raises(ValueError):
        make_service_credential(key, role="admin")
    with pytest.raises(ValueError):
        make_service_credential(key, ttl=0)
    for garbage in ("", "rxs1", "rxs1.a.b", None, 5, "x" * 5000):
        with pytest.raises(AuthError):
            verify_service_credential(key, garbage)
