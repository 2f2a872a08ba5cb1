"""The broker's admission decisions, with real validators (token file, an unreachable IdP)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rexec import protocol as p
from rexec.auth import (
    CachingValidator,
    IntrospectionValidator,
    StaticTokenValidator,
    create_static_token,
)
from rexec.localstack import free_port
from rexec_broker.admission import Admission, Admitted, Decision, Denied, Revoked
from rexec_broker.routing import ClientConn

DEADLINE = 5.0
TTL = 60.0


class Loop:
    """The broker loop's side of the wake-up: waits for one, then asks for the decisions."""

    def __init__(self) -> None:
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()

    def decisions(self, admission: Admission, clients: dict[bytes, ClientConn]) -> list[Decision]:
        assert self.woken.wait(DEADLINE), "no check finished before the deadline"
        assert admission.ended  # a check is queued before its wake-up
        self.woken.clear()
        return admission.finished(clients)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def make_admission(validator: CachingValidator, loop: Loop) -> Admission:
    return Admission(validator, threads=2, wake=loop.wake, cache_ttl=TTL)


def client_for(rid: bytes, user: str, token: str, validated_at: float) -> ClientConn:
    return ClientConn(rid, user, (), "default", token, validated_at)


def test_unknown_token_is_checked_off_the_caller_then_admitted(token_file: Path) -> None:
    token = create_static_token(token_file, "alice", ["lab"])
    loop = Loop()
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file)), loop)
    try:
        assert admission.hello(b"\0a", {"token": token, "worker": "w1"}) is None
        [decision] = loop.decisions(admission, {})
        assert isinstance(decision, Admitted)
        assert (decision.rid, decision.worker, decision.identity.user) == (b"\0a", "w1", "alice")
        assert decision.identity.groups == ("lab",)
        # Now cached: the next hello is decided at once.
        again = admission.hello(b"\0b", {"token": token})
        assert isinstance(again, Admitted) and again.worker == "default"
        assert token not in repr(again)
    finally:
        admission.close()


def test_wrong_token_is_denied_without_echoing_it(token_file: Path) -> None:
    create_static_token(token_file, "alice")
    loop = Loop()
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file)), loop)
    try:
        assert admission.hello(b"\0a", {"token": "not-a-real-token-1234"}) is None
        [decision] = loop.decisions(admission, {})
        assert isinstance(decision, Denied)
        assert decision.code == p.E_AUTH_FAILED
        assert "not-a-real-token-1234" not in decision.message
    finally:
        admission.close()


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({}, p.E_AUTH_FAILED),
        ({"token": ""}, p.E_AUTH_FAILED),
        ({"token": 42}, p.E_AUTH_FAILED),
        ({"token": "x" * 9000}, p.E_AUTH_FAILED),
        ({"token": "abc", "worker": "../other"}, p.E_BAD_MESSAGE),
    ],
)
def test_malformed_hellos_are_denied_at_once(
    token_file: Path, header: dict[str, object], code: str
) -> None:
    create_static_token(token_file, "alice")
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file)), Loop())
    try:
        decision = admission.hello(b"\0a", header)
        assert isinstance(decision, Denied) and decision.code == code
    finally:
        admission.close()


def test_unreachable_idp_is_denied_as_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}/introspect"
    loop = Loop()
    admission = make_admission(CachingValidator(IntrospectionValidator(url, timeout=1.0)), loop)
    try:
        assert admission.hello(b"\0a", {"token": "some-token-value"}) is None
        [decision] = loop.decisions(admission, {})
        assert isinstance(decision, Denied) and decision.code == p.E_AUTH_UNAVAILABLE
        assert "some-token-value" not in decision.message
    finally:
        admission.close()


def test_late_outcome_of_a_dropped_hello_decides_nothing(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    loop = Loop()
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file)), loop)
    try:
        assert admission.hello(b"\0a", {"token": token}) is None
        admission.forget(b"\0a")  # the connection went away while its token was checked
        assert loop.decisions(admission, {}) == []
    finally:
        admission.close()


def test_only_the_latest_hello_of_a_connection_decides(token_file: Path) -> None:
    first = create_static_token(token_file, "alice")
    second = create_static_token(token_file, "bob")
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file)), Loop())
    try:
        assert admission.hello(b"\0a", {"token": first}) is None
        assert admission.hello(b"\0a", {"token": second}) is None
        decisions: list[Decision] = []
        end = time.monotonic() + 1.0  # both checks take milliseconds; collect all they decide
        while time.monotonic() < end:
            decisions += admission.finished({})
            time.sleep(0.01)
        assert len(decisions) == 1, decisions
        assert isinstance(decisions[0], Admitted) and decisions[0].identity.user == "bob"
    finally:
        admission.close()


def test_revalidation_keeps_a_valid_session_and_revokes_a_revoked_one(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    loop = Loop()
    # No cache: each revalidation asks the token file.
    admission = make_admission(CachingValidator(StaticTokenValidator(token_file), ttl=0), loop)
    client = client_for(b"\0a", "alice", token, validated_at=time.monotonic() - TTL - 1)
    clients = {client.rid: client}
    try:
        admission.revalidate(client)
        assert client.revalidating
        assert loop.decisions(admission, clients) == []
        assert not client.revalidating
        assert time.monotonic() - client.validated_at < 1.0

        token_file.write_text('{"tokens": []}')  # revoke every token
        admission.revalidate(client)
        assert loop.decisions(admission, clients) == [Revoked(b"\0a", "alice")]
    finally:
        admission.close()


def test_revalidation_during_an_idp_outage_keeps_the_session_and_retries_soon() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}/introspect"
    loop = Loop()
    admission = make_admission(CachingValidator(IntrospectionValidator(url, timeout=1.0)), loop)
    stale = time.monotonic() - TTL - 1
    client = client_for(b"\0a", "alice", "some-token-value", validated_at=stale)
    try:
        admission.revalidate(client)
        assert loop.decisions(admission, {client.rid: client}) == []
        assert not client.revalidating
        # Due again within seconds, not after a whole TTL.
        age = time.monotonic() - client.validated_at
        assert TTL - 15 < age < TTL
    finally:
        admission.close()
