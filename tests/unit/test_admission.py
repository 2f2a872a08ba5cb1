"""The broker's admission decisions, with real validators (token file, an unreachable IdP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rexec import protocol as p
from rexec.auth import (
    CachingValidator,
    IntrospectionValidator,
    StaticTokenValidator,
    TokenValidator,
    create_static_token,
)
from rexec.localstack import free_port
from rexec_broker.admission import Admission, Admitted, Decision, Denied, Revoked
from rexec_broker.routing import ClientConn

DEADLINE = 5.0
TTL = 60.0


class Loop:
    """The broker loop's side of admission: waits for a wake-up, then takes the decisions."""

    def __init__(self, validator: CachingValidator) -> None:
        self.woken = threading.Event()
        self.admission = Admission(validator, threads=2, wake=self.woken.set, cache_ttl=TTL)

    def decisions(self, clients: dict[bytes, ClientConn] | None = None) -> list[Decision]:
        assert self.woken.wait(DEADLINE), "no check finished before the deadline"
        assert self.admission.ended  # a check is queued before its wake-up
        self.woken.clear()
        return self.admission.finished(clients or {})


MakeLoop = Callable[..., Loop]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def make_loop(token_file: Path) -> Iterator[MakeLoop]:
    """``make_loop()`` admits by the token file; ``make_loop(idp_down=True)`` asks an IdP that
    does not answer; ``cache_ttl=0`` makes every check ask again."""
    loops: list[Loop] = []

    def make(idp_down: bool = False, cache_ttl: float = TTL) -> Loop:
        if idp_down:
            url = f"http://127.0.0.1:{free_port('127.0.0.1')}/introspect"
            inner: TokenValidator = IntrospectionValidator(url, timeout=1.0)
        else:
            inner = StaticTokenValidator(token_file)
        loops.append(Loop(CachingValidator(inner, ttl=cache_ttl)))
        return loops[-1]

    yield make
    for loop in loops:
        loop.admission.close()


def stale_client(rid: bytes, user: str, token: str) -> ClientConn:
    """A connected client whose validation is older than the cache TTL."""
    return ClientConn(rid, user, (), "default", token, time.monotonic() - TTL - 1)


def test_unknown_token_is_checked_off_the_caller_then_admitted(
    token_file: Path, make_loop: MakeLoop
) -> None:
    token = create_static_token(token_file, "alice", ["lab"])
    loop = make_loop()
    assert loop.admission.hello(b"\0a", {"token": token, "worker": "w1"}) is None
    [decision] = loop.decisions()
    assert isinstance(decision, Admitted)
    assert (decision.rid, decision.worker, decision.identity.user) == (b"\0a", "w1", "alice")
    assert decision.identity.groups == ("lab",)
    # Now cached: the next hello is decided at once.
    again = loop.admission.hello(b"\0b", {"token": token})
    assert isinstance(again, Admitted) and again.worker == "default"
    assert token not in repr(again)


def test_wrong_token_is_denied_without_echoing_it(token_file: Path, make_loop: MakeLoop) -> None:
    create_static_token(token_file, "alice")
    loop = make_loop()
    assert loop.admission.hello(b"\0a", {"token": "not-a-real-token-1234"}) is None
    [decision] = loop.decisions()
    assert isinstance(decision, Denied)
    assert decision.code == p.E_AUTH_FAILED
    assert "not-a-real-token-1234" not in decision.message


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
    token_file: Path, make_loop: MakeLoop, header: dict[str, object], code: str
) -> None:
    create_static_token(token_file, "alice")
    decision = make_loop().admission.hello(b"\0a", header)
    assert isinstance(decision, Denied) and decision.code == code


def test_unreachable_idp_is_denied_as_unavailable(make_loop: MakeLoop) -> None:
    loop = make_loop(idp_down=True)
    assert loop.admission.hello(b"\0a", {"token": "some-token-value"}) is None
    [decision] = loop.decisions()
    assert isinstance(decision, Denied) and decision.code == p.E_AUTH_UNAVAILABLE
    assert "some-token-value" not in decision.message


def test_late_outcome_of_a_dropped_hello_decides_nothing(
    token_file: Path, make_loop: MakeLoop
) -> None:
    token = create_static_token(token_file, "alice")
    loop = make_loop()
    assert loop.admission.hello(b"\0a", {"token": token}) is None
    loop.admission.forget(b"\0a")  # the connection went away while its token was checked
    time.sleep(0.5)  # the check either never started or ended meanwhile
    assert loop.admission.finished({}) == [] and loop.admission.waiting == 0


def test_only_the_latest_hello_of_a_connection_decides(
    token_file: Path, make_loop: MakeLoop
) -> None:
    first = create_static_token(token_file, "alice")
    second = create_static_token(token_file, "bob")
    admission = make_loop().admission
    assert admission.hello(b"\0a", {"token": first}) is None
    assert admission.hello(b"\0a", {"token": second}) is None
    decisions: list[Decision] = []
    end = time.monotonic() + 1.0  # both checks take milliseconds; collect all they decide
    while time.monotonic() < end:
        decisions += admission.finished({})
        time.sleep(0.01)
    assert len(decisions) == 1, decisions
    assert isinstance(decisions[0], Admitted) and decisions[0].identity.user == "bob"


def test_revalidation_keeps_a_valid_session_and_revokes_a_revoked_one(
    token_file: Path, make_loop: MakeLoop
) -> None:
    token = create_static_token(token_file, "alice")
    loop = make_loop(cache_ttl=0)  # each revalidation reads the token file
    client = stale_client(b"\0a", "alice", token)
    clients = {client.rid: client}
    loop.admission.revalidate(client)
    assert client.revalidating
    assert loop.decisions(clients) == []
    assert not client.revalidating
    assert time.monotonic() - client.validated_at < 1.0

    token_file.write_text('{"tokens": []}')  # revoke every token
    loop.admission.revalidate(client)
    assert loop.decisions(clients) == [Revoked(b"\0a", "alice")]


def test_revalidation_during_an_idp_outage_keeps_the_session_and_retries_soon(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(idp_down=True)
    client = stale_client(b"\0a", "alice", "some-token-value")
    loop.admission.revalidate(client)
    assert loop.decisions({client.rid: client}) == []
    assert not client.revalidating
    # Due again within seconds, not after a whole TTL.
    age = time.monotonic() - client.validated_at
    assert TTL - 15 < age < TTL
