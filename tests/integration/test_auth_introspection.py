"""Token introspection against a real identity provider served by uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rexec.auth import (
    AuthSettings,
    Identity,
    IntrospectionValidator,
    NotInAllowedGroup,
    make_validator,
)
from rexec.errors import AuthError, AuthUnavailable
from tests.support.idp import IdentityProvider
from tests.support.servers import free_port, serve

pytestmark = pytest.mark.integration

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"


@pytest.fixture
def idp() -> IdentityProvider:
    provider = IdentityProvider()
    provider.add(ALICE, "alice", ["science", "staff"])
    provider.add(BOB, "bob", field="preferred_username")  # no groups key at all
    return provider


@pytest.fixture
def idp_url(idp: IdentityProvider) -> Iterator[str]:
    with serve(idp.make_app()) as base_url:
        yield base_url


@pytest.fixture
def validators() -> Iterator[list[IntrospectionValidator]]:
    made: list[IntrospectionValidator] = []
    yield made
    for validator in made:
        validator.close()


def make(
    made: list[IntrospectionValidator], url: str, method: str = "GET", timeout: float = 5.0
) -> IntrospectionValidator:
    validator = IntrospectionValidator(url, method, timeout)
    made.append(validator)
    return validator


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_introspection_returns_the_identity(
    idp_url: str, validators: list[IntrospectionValidator], method: str
) -> None:
    validator = make(validators, f"{idp_url}/introspect", method)
    assert validator.validate(ALICE) == Identity("alice", ("science", "staff"))
    assert validator.validate(BOB) == Identity("bob", ())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_refused_token_is_an_auth_error_without_the_token(
    idp_url: str, validators: list[IntrospectionValidator], method: str
) -> None:
    validator = make(validators, f"{idp_url}/introspect", method)
    secret = "unknown-token-abcdef123456"
    with pytest.raises(AuthError) as caught:
        validator.validate(secret)
    assert not isinstance(caught.value, AuthUnavailable)
    assert "refused" in str(caught.value)
    assert secret not in str(caught.value)


def test_user_field_order_is_sub_then_username_then_preferred_username(
    idp: IdentityProvider, idp_url: str, validators: list[IntrospectionValidator]
) -> None:
    idp.tokens["t-all"] = {"sub": "s", "username": "u", "preferred_username": "p"}
    idp.tokens["t-two"] = {"username": "u", "preferred_username": "p", "groups": ["g", 3]}
    validator = make(validators, f"{idp_url}/introspect")
    assert validator.validate("t-all").user == "s"
    assert validator.validate("t-two") == Identity("u", ("g",))


def test_inactive_token_is_refused(
    idp: IdentityProvider, idp_url: str, validators: list[IntrospectionValidator]
) -> None:
    idp.tokens["t-dead"] = {"active": False, "sub": "alice"}
    with pytest.raises(AuthError, match="refused"):
        make(validators, f"{idp_url}/introspect").validate("t-dead")


def test_unreachable_provider_is_unavailable_with_a_clear_message(
    validators: list[IntrospectionValidator],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/introspect"
    with pytest.raises(AuthUnavailable) as caught:
        make(validators, url, timeout=2.0).validate(ALICE)
    message = str(caught.value)
    assert url in message and "could not be reached" in message and "AUTH_API_URL" in message
    assert ALICE not in message


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/broken", "HTTP 500"), ("/not-json", "not JSON"), ("/no-user", "without a user name")],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_broken_provider_answers_are_unavailable(
    idp_url: str, validators: list[IntrospectionValidator], path: str, expected: str, method: str
) -> None:
    with pytest.raises(AuthUnavailable, match=expected) as caught:
        make(validators, idp_url + path, method).validate(ALICE)
    assert ALICE not in str(caught.value)


def test_slow_provider_times_out_as_unavailable(
    idp: IdentityProvider, idp_url: str, validators: list[IntrospectionValidator]
) -> None:
    idp.delay = 1.5
    with pytest.raises(AuthUnavailable, match=r"did not answer within 0\.5 s") as caught:
        make(validators, f"{idp_url}/introspect", timeout=0.5).validate(ALICE)
    assert ALICE not in str(caught.value)


def test_cache_spares_the_provider_a_second_call(idp: IdentityProvider, idp_url: str) -> None:
    validator = make_validator(AuthSettings(api_url=f"{idp_url}/introspect", api_method="POST"))
    try:
        assert validator.validate(ALICE).user == "alice"
        assert idp.requests == 1
        assert validator.peek(ALICE) == Identity("alice", ("science", "staff"))
        assert validator.validate(ALICE).user == "alice"
        assert idp.requests == 1
        # Refusals are cached too (briefly), so a client retrying a bad token is cheap.
        for _ in range(3):
            with pytest.raises(AuthError):
                validator.validate("bad-token-123")
        assert idp.requests == 2
    finally:
        validator.close()


def test_outages_are_not_cached(idp: IdentityProvider, idp_url: str) -> None:
    validator = make_validator(AuthSettings(api_url=f"{idp_url}/introspect", timeout=0.5))
    try:
        idp.delay = 1.0
        with pytest.raises(AuthUnavailable):
            validator.validate(ALICE)
        idp.delay = 0.0
        assert validator.validate(ALICE).user == "alice"
    finally:
        validator.close()


def test_group_allow_list_with_the_provider(idp: IdentityProvider, idp_url: str) -> None:
    settings = AuthSettings(api_url=f"{idp_url}/introspect", allowed_groups=("science",))
    validator = make_validator(settings)
    try:
        assert validator.validate(ALICE).user == "alice"
        with pytest.raises(NotInAllowedGroup, match="ask an operator") as caught:
            validator.validate(BOB)
        assert BOB not in str(caught.value)
    finally:
        validator.close()
