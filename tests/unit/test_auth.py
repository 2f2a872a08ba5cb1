"""Token validation without a network: static token file, cache, group allow-list, settings."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rexec.auth import (
    AuthSettings,
    CachingValidator,
    GroupAllowList,
    Identity,
    IntrospectionValidator,
    NotInAllowedGroup,
    StaticTokenValidator,
    TokenValidator,
    create_static_token,
    hash_token,
    make_validator,
)
from rexec.errors import AuthError, AuthUnavailable, ConfigError

DEADLINE = 5.0


def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "auth" / "tokens.json"


def refused_message(validator: TokenValidator, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        validator.validate(token)
    return str(caught.value)


# --- static token file -----------------------------------------------------------------------


def test_created_token_file_is_private_and_holds_only_hashes(token_file: Path) -> None:
    token = create_static_token(token_file, "alice", ["science"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    text = token_file.read_text()
    assert token not in text
    entry = json.loads(text)["tokens"][0]
    assert entry == {"sha256": hash_token(token), "user": "alice", "groups": ["science"]}
    assert StaticTokenValidator(token_file).validate(token) == Identity("alice", ("science",))


def test_creating_more_tokens_keeps_existing_entries(token_file: Path) -> None:
    first = create_static_token(token_file, "alice")
    second = create_static_token(token_file, "bob", ("g",))
    assert first != second
    validator = StaticTokenValidator(token_file)
    assert validator.validate(first) == Identity("alice")
    assert validator.validate(second) == Identity("bob", ("g",))
    assert not list(token_file.parent.glob(".*.tmp")), "no partial files left behind"


def test_static_validator_refuses_unknown_tokens(token_file: Path) -> None:
    create_static_token(token_file, "alice")
    message = refused_message(StaticTokenValidator(token_file), "not-a-real-token")
    assert "not-a-real-token" not in message


def test_static_validator_reloads_when_the_file_changes(token_file: Path) -> None:
    create_static_token(token_file, "alice")
    validator = StaticTokenValidator(token_file)
    later = create_static_token(token_file, "bob")
    assert validator.validate(later) == Identity("bob")
    # Revocation: an entry removed from the file stops working without a restart.
    data = json.loads(token_file.read_text())
    data["tokens"] = [e for e in data["tokens"] if e["user"] != "bob"]
    token_file.write_text(json.dumps(data))
    refused_message(validator, later)


def test_missing_token_file_is_a_config_error_naming_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError) as caught:
        StaticTokenValidator(path)
    assert str(path) in str(caught.value)
    assert "rexec up" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"tokens": {}}',
        '{"tokens": [{"sha256": "abc", "user": "x"}]}',
        '{"tokens": [{"sha256": "' + "0" * 64 + '", "user": ""}]}',
        '{"tokens": [{"sha256": "' + "0" * 64 + '", "user": "x", "groups": "g"}]}',
    ],
)
def test_malformed_token_file_is_a_config_error(token_file: Path, content: str) -> None:
    token_file.parent.mkdir(parents=True)
    token_file.write_text(content)
    with pytest.raises(ConfigError, match=str(token_file)):
        StaticTokenValidator(token_file)


def test_token_file_broken_at_run_time_is_unavailable_not_refused(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    validator = StaticTokenValidator(token_file)
    token_file.write_text("{")
    with pytest.raises(AuthUnavailable, match="not valid JSON"):
        validator.validate(token)


@pytest.mark.parametrize("token", ["", "sp ace-tok", "new\nline-tok", "x" * 9000])
def test_odd_tokens_are_refused_without_being_echoed(token_file: Path, token: str) -> None:
    create_static_token(token_file, "alice")
    message = refused_message(StaticTokenValidator(token_file), token)
    if token:
        assert token not in message


# --- cache -----------------------------------------------------------------------------------


def test_cache_answers_from_memory_until_the_ttl_passes(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    cache = CachingValidator(StaticTokenValidator(token_file), ttl=0.5)
    assert cache.peek(token) is None
    assert cache.validate(token) == Identity("alice")
    assert cache.peek(token) == Identity("alice")
    token_file.write_text('{"tokens": []}')  # revoke
    assert cache.validate(token) == Identity("alice"), "served from the cache"
    wait_for(lambda: cache.peek(token) is None)
    refused_message(cache, token)


def test_cache_remembers_refusals_briefly(token_file: Path) -> None:
    create_static_token(token_file, "alice")
    cache = CachingValidator(StaticTokenValidator(token_file), negative_ttl=0.5)
    unknown = "tok-" + "a" * 40
    refused_message(cache, unknown)
    # Make the token valid behind the cache's back: the refusal is remembered for a moment.
    data = json.loads(token_file.read_text())
    data["tokens"].append({"sha256": hash_token(unknown), "user": "carol", "groups": []})
    token_file.write_text(json.dumps(data))
    refused_message(cache, unknown)
    assert cache.peek(unknown) is None, "peek only returns successes"

    def accepted() -> bool:
        try:
            return cache.validate(unknown) == Identity("carol")
        except AuthError:
            return False

    wait_for(accepted)


def test_cache_never_remembers_outages(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    cache = CachingValidator(StaticTokenValidator(token_file), negative_ttl=60)
    good = token_file.read_text()
    token_file.write_text("{")
    with pytest.raises(AuthUnavailable):
        cache.validate(token)
    token_file.write_text(good)
    assert cache.validate(token) == Identity("alice")


def test_cache_is_bounded(token_file: Path) -> None:
    tokens = [create_static_token(token_file, f"user{i}") for i in range(5)]
    cache = CachingValidator(StaticTokenValidator(token_file), max_entries=3)
    for token in tokens:
        cache.validate(token)
    cached = [token for token in tokens if cache.peek(token) is not None]
    assert cached == tokens[-3:]


# --- group allow-list ------------------------------------------------------------------------


def test_group_allow_list(token_file: Path) -> None:
    member = create_static_token(token_file, "alice", ["staff", "science"])
    outsider = create_static_token(token_file, "bob", ["visitors"])
    settings = AuthSettings(token_file=token_file, allowed_groups=("science", "ops"))
    validator = make_validator(settings)
    assert validator.validate(member).user == "alice"
    with pytest.raises(NotInAllowedGroup) as caught:
        validator.validate(outsider)
    message = str(caught.value)
    assert "'bob'" in message and "science, ops" in message and outsider not in message
    # Cached answers obey the list too: the refusal is cached with its type, peek stays empty.
    with pytest.raises(NotInAllowedGroup):
        validator.validate(outsider)
    assert validator.peek(outsider) is None
    assert validator.peek(member) == Identity("alice", ("staff", "science"))


def test_empty_allow_list_allows_everyone(token_file: Path) -> None:
    token = create_static_token(token_file, "bob")
    inner = StaticTokenValidator(token_file)
    assert GroupAllowList(inner, ()).validate(token) == Identity("bob")


# --- settings --------------------------------------------------------------------------------


def test_settings_from_env() -> None:
    env = {
        "AUTH_API_URL": "https://idp.example.org/introspect",
        "REXEC_AUTH_METHOD": "post",
        "REXEC_ALLOWED_GROUPS": " science, ops ,,",
        "REXEC_TOKEN_FILE": "/tmp/tokens.json",
        "REXEC_AUTH_CACHE_TTL": "30",
    }
    settings = AuthSettings.from_env(env)
    assert settings.api_url == "https://idp.example.org/introspect"
    assert settings.api_method == "POST"
    assert settings.allowed_groups == ("science", "ops")
    assert settings.token_file == Path("/tmp/tokens.json")
    assert settings.cache_ttl == 30.0
    assert AuthSettings.from_env(env, cache_ttl=5.0, api_url=None).cache_ttl == 5.0
    assert AuthSettings.from_env({}) == AuthSettings()


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="GET or POST"):
        AuthSettings(api_method="PATCH")
    with pytest.raises(ConfigError, match="REXEC_AUTH_CACHE_TTL"):
        AuthSettings.from_env({"REXEC_AUTH_CACHE_TTL": "soon"})


def test_make_validator_needs_a_source_and_explains_both() -> None:
    with pytest.raises(ConfigError) as caught:
        make_validator(AuthSettings())
    assert "AUTH_API_URL" in str(caught.value) and "REXEC_TOKEN_FILE" in str(caught.value)


def test_api_url_wins_over_token_file(token_file: Path) -> None:
    create_static_token(token_file, "alice")
    settings = AuthSettings(token_file=token_file, api_url="http://127.0.0.1:9/introspect")
    validator = make_validator(settings)
    try:
        assert isinstance(validator.inner, IntrospectionValidator)
    finally:
        validator.close()


def test_reprs_hold_no_secrets(token_file: Path) -> None:
    token = create_static_token(token_file, "alice")
    validator = make_validator(AuthSettings(token_file=token_file))
    validator.validate(token)
    assert token not in repr(validator)
    assert hash_token(token) not in repr(validator)
    assert os.fspath(token_file) in repr(validator)
