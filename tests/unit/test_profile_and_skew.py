"""Finding the stack, and telling the user about version skew."""

from __future__ import annotations

import stat

import pytest

from rexec.client.skew import check_skew, local_info
from rexec.errors import ConfigError
from rexec.profile import Profile, load_profile, profile_path, write_profile


def test_no_stack_is_a_clear_error():
    with pytest.raises(ConfigError, match="rexec up"):
        load_profile()


def test_profile_file_then_environment_then_arguments(monkeypatch):
    path = write_profile(Profile(spawner_url="http://a:1", token="file-token"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_profile().token == "file-token"
    monkeypatch.setenv("REXEC_TOKEN", "env-token")
    assert load_profile().token == "env-token"
    assert load_profile(token="arg-token").token == "arg-token"
    assert path == profile_path()


def test_profile_repr_hides_the_token():
    assert "secret" not in repr(Profile(token="secret", broker_url="tcp://x:1"))


def test_skew_names_what_differs_and_how_to_fix_it():
    mine = local_info()
    assert check_skew(dict(mine)) == []
    problems = check_skew({**mine, "python_minor": "3.13", "dill": "0.0.1"}, mine)
    assert any("Python 3.13" in p and mine["python_minor"] in p for p in problems)
    assert any("pip install dill==" in p for p in problems)
