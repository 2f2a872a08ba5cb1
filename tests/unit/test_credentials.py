"""Worker credentials: signed, bound to one user, tamper-evident, expiring."""

from __future__ import annotations

import stat

import pytest

from rexec.credentials import (
    create_key_file,
    load_key,
    make_worker_credential,
    verify_worker_credential,
)
from rexec.errors import AuthError

KEY = b"k" * 32


def test_valid_credential_names_its_user_and_worker():
    claims = verify_worker_credential(KEY, make_worker_credential(KEY, "alice", "gpu"))
    assert (claims.user, claims.worker) == ("alice", "gpu")


def test_other_key_or_tampering_is_refused():
    credential = make_worker_credential(KEY, "alice", "default")
    with pytest.raises(AuthError, match="signature"):
        verify_worker_credential(b"x" * 32, credential)
    prefix, body, signature = credential.split(".")
    with pytest.raises(AuthError):
        verify_worker_credential(KEY, f"{prefix}.{body[:-2]}AA.{signature}")
    for junk in ("", "a.b", "rxw1.!!.??", "x" * 5000):
        with pytest.raises(AuthError, match=r"malformed|signature"):
            verify_worker_credential(KEY, junk)


def test_expired_credential_is_refused():
    credential = make_worker_credential(KEY, "alice", "default", ttl=10, now=1000)
    assert verify_worker_credential(KEY, credential, now=1005).user == "alice"
    with pytest.raises(AuthError, match="expired"):
        verify_worker_credential(KEY, credential, now=1011)


def test_key_file_is_private(tmp_path):
    path = tmp_path / "keys" / "signing.key"
    key = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
