"""Spawner pieces that need no server: settings, names, the command line, response models."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rexec.auth import AuthSettings
from rexec.errors import ConfigError, SpawnError
from rexec.localstack import spawner_arguments
from rexec_spawner.backends.base import ProgressEvent, WorkerRecord, check_worker_name
from rexec_spawner.backends.worker_status import MAX_EXTRA_FIELDS, is_python_minor, parse_status
from rexec_spawner.cli import make_parser, settings_from_args
from rexec_spawner.config import SpawnerSettings
from rexec_spawner.models import BrokerInfo, WorkerStatus
from rexec_spawner.names import make_user_dir_name, valid_worker_name


def test_settings_from_env_reads_every_variable(tmp_path: Path) -> None:
    env = {
        "REXEC_SPAWNER_HOST": "0.0.0.0",
        "REXEC_SPAWNER_PORT": "9000",
        "REXEC_SIGNING_KEY_FILE": str(tmp_path / "key"),
        "REXEC_BROKER_URL": "tcp://broker.example.org:30001",
        "REXEC_BROKER_BACKEND_URL": "tcp://broker:5560",
        "REXEC_BROKER_PUBLIC_KEY": "public-z85",
        "REXEC_SPAWNER_DATA_DIR": str(tmp_path / "data"),
        "REXEC_WORKER_READY_TIMEOUT": "12.5",
        "REXEC_WORKER_COMMAND": "/opt/py/bin/python -m rexec worker",
        "REXEC_TOKEN_FILE": str(tmp_path / "tokens.json"),
    }
    settings = SpawnerSettings.from_env(env)
    assert settings.host == "0.0.0.0" and settings.port == 9000
    assert settings.signing_key_path == tmp_path / "key"
    assert settings.broker_url == "tcp://broker.example.org:30001"
    assert settings.broker_backend_url == "tcp://broker:5560"
    assert settings.broker_public_key == "public-z85"
    assert settings.data_dir == tmp_path / "data"
    assert settings.worker_ready_timeout == 12.5
    assert settings.worker_command == ("/opt/py/bin/python", "-m", "rexec", "worker")
    assert settings.auth.token_file == tmp_path / "tokens.json"


def test_settings_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_HOME", str(tmp_path))
    settings = SpawnerSettings.from_env({})
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8750, "local")
    assert settings.data_dir == tmp_path / "stack"
    assert settings.signing_key_path == tmp_path / "stack" / "signing.key"
    assert settings.worker_command == (sys.executable, "-m", "rexec", "worker")
    assert settings.broker_public_key is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REXEC_SPAWNER_PORT": "http"}, "REXEC_SPAWNER_PORT"),
        ({"REXEC_SPAWNER_BACKEND": "slurm"}, "choose one of: local"),
        ({"REXEC_WORKER_READY_TIMEOUT": "0"}, "positive"),
        ({"REXEC_BROKER_URL": "http://broker"}, "tcp://host:port"),
        ({"REXEC_WORKER_COMMAND": "python 'unclosed"}, "REXEC_WORKER_COMMAND"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpawnerSettings.from_env(env)


def test_the_body_cap_is_read_from_the_environment() -> None:
    assert SpawnerSettings.from_env({}).max_body_bytes == 1024 * 1024
    assert SpawnerSettings.from_env({"REXEC_SPAWNER_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="REXEC_SPAWNER_MAX_BODY_BYTES must be a positive"):
            SpawnerSettings.from_env({"REXEC_SPAWNER_MAX_BODY_BYTES": bad})
    with pytest.raises(ConfigError, match="REXEC_SPAWNER_MAX_BODY_BYTES must be a number"):
        SpawnerSettings.from_env({"REXEC_SPAWNER_MAX_BODY_BYTES": "1M"})


def test_local_users_come_from_the_environment_or_the_command_line() -> None:
    assert SpawnerSettings.from_env({}).local_users == ()
    listed = SpawnerSettings.from_env({"REXEC_LOCAL_USERS": " alice, bob ,,alice"})
    assert listed.local_users == ("alice", "bob")
    args = make_parser().parse_args(["--local-users", "carol,dave", "--token-file", "t.json"])
    assert settings_from_args(args).local_users == ("carol", "dave")
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--local-users", " , "])
    with pytest.raises(ConfigError, match="REXEC_LOCAL_USERS holds an empty user name"):
        replace(listed, local_users=("alice", " "))


def test_the_local_stack_passes_values_that_look_like_options(tmp_path: Path) -> None:
    # A Z85 public key may start with "-", and so may a user name.
    key, user = "-rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "-dash"
    arguments = spawner_arguments(
        "127.0.0.1", 8750, tmp_path, "tcp://127.0.0.1:5559", "tcp://127.0.0.1:5560", user, key
    )
    args = make_parser().parse_args([*arguments, "--token-file", str(tmp_path / "t.json")])
    assert args.broker_public_key == key and args.local_users == (user,)
    settings = settings_from_args(args)
    assert settings.local_users == (user,) and settings.data_dir == tmp_path


def test_command_line_overrides_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AUTH_API_URL",
        "REXEC_AUTH_METHOD",
        "REXEC_ALLOWED_GROUPS",
        "REXEC_AUTH_CACHE_TTL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REXEC_SPAWNER_PORT", "9000")
    monkeypatch.setenv("REXEC_TOKEN_FILE", str(tmp_path / "env-tokens.json"))
    args = make_parser().parse_args(
        ["--port", "9100", "--token-file", str(tmp_path / "t.json"), "--allowed-groups", "a,b"]
    )
    settings = settings_from_args(args)
    assert settings.port == 9100
    assert settings.auth == AuthSettings(token_file=tmp_path / "t.json", allowed_groups=("a", "b"))


@pytest.mark.parametrize("name", ["default", "a", "gpu-1", "x" * 32, "0"])
def test_valid_worker_names(name: str) -> None:
    assert valid_worker_name(name)
    check_worker_name(name)


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "A", "a_b", "a/b", "..", "x" * 33, "é", "default\n", "a\n"]
)
def test_invalid_worker_names(name: str) -> None:
    assert not valid_worker_name(name)
    with pytest.raises(SpawnError, match="lowercase letters"):
        check_worker_name(name)


def test_user_dir_names_are_safe_and_distinct() -> None:
    users = ["alice", "Alice", "a/b", "a.b", "../../etc", "", "ü" * 100, "x" * 500, "a\x00b"]
    names = [make_user_dir_name(user) for user in users]
    assert len(set(names)) == len(users)
    for name in names:
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
        assert len(name) <= 45
        assert Path("/base", name).parent == Path("/base")
    assert make_user_dir_name("alice") == make_user_dir_name("alice")
    assert make_user_dir_name("alice").startswith("alice-")


def test_worker_status_from_record() -> None:
    record = WorkerRecord(
        user="alice",
        name="default",
        state="ready",
        instance="abc",
        created_at=1.0,
        progress=(ProgressEvent(2.0, "starting worker process (pid 7)"),),
        info={"pid": 7},
    )
    status = WorkerStatus.from_record(record, BrokerInfo(url="tcp://b:1", public_key=None))
    assert status.model_dump() == {
        "user": "alice",
        "name": "default",
        "state": "ready",
        "progress": [{"time": 2.0, "message": "starting worker process (pid 7)"}],
        "info": {"pid": 7},
        "error": None,
        "created_at": 1.0,
        "broker": {"url": "tcp://b:1", "public_key": None},
    }


def test_status_reports_keep_only_checked_fields() -> None:
    good = {"state": "registered", "pid": 7, "python_minor": "3.11", "env_id": "base", "x": 1}
    report = parse_status(json.dumps(good).encode())
    assert report.readable and report.state == "registered" and not report.problems
    assert report.info == {"pid": 7, "python_minor": "3.11", "env_id": "base", "x": 1}

    hostile = {
        "state": ["registered"],
        "pid": True,
        "python_minor": "3.11; rm -rf ~",
        "host": "h" * 10_000,
        "nested": {"a": 1},
        **{f"k{i}": i for i in range(100)},
    }
    report = parse_status(json.dumps(hostile).encode())
    assert report.readable and report.state is None
    assert {"state", "pid", "python_minor", "host", "other"} <= set(report.problems)
    assert "rm -rf" not in " ".join(report.problems.values())
    assert not {"pid", "python_minor", "host", "nested"} & set(report.info)
    assert len(report.info) == MAX_EXTRA_FIELDS


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"[" * 5000, "json"), (b"\xff", "encoding"), (b"[]", "shape"), (b"NaN", "shape")],
)
def test_unusable_status_files_are_refused_whole(data: bytes, kind: str) -> None:
    report = parse_status(data)
    assert not report.readable and set(report.problems) == {kind}


def test_python_minor_versions() -> None:
    assert is_python_minor("3.11") and is_python_minor("3.9")
    for bad in ("3", "3.11.7", "3.11\n", " 3.11", "3.11; x", 3.11, None, {"3": 11}):
        assert not is_python_minor(bad)
