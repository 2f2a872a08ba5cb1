"""The local backend serves one user unless the operator lists several, and hands its workers only
the environment they need. A real spawner (uvicorn) with real worker processes."""

from __future__ import annotations

import json
import logging
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from rexec.errors import ConfigError
from rexec_spawner.app import create_app
from rexec_spawner.backends.local_users import OWNER_FILE
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration

# A stand-in worker that stays up: these tests are about who may have workers, not about calls.
SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")
USERS: dict[str, tuple[str, ...]] = {"alice": (), "bob": (), "eve": ()}
REQUIREMENTS = {"requirements": "six==1.16.0"}


def make_stack(
    tmp_path: Path, local_users: tuple[str, ...] = (), **options: object
) -> SpawnerFixture:
    values: dict[str, object] = {
        "broker_backend_url": f"tcp://127.0.0.1:{free_port()}",
        "worker_command": SLEEPER,
        "local_users": local_users,
        **options,
    }
    return make_spawner_fixture(tmp_path, users=USERS, **values)


@contextmanager
def running(stack: SpawnerFixture) -> Iterator[dict[str, httpx.Client]]:
    """The spawner, and an HTTP client per user."""
    with serve(create_app(stack.settings), probe="/healthz") as url:
        clients = {
            user: httpx.Client(base_url=url, headers=stack.headers(user), timeout=10)
            for user in stack.tokens
        }
        try:
            yield clients
        finally:
            for client in clients.values():
                client.close()


def worker_routes(http: httpx.Client) -> dict[str, httpx.Response]:
    """Every worker route of the API, called for the worker 'default'."""
    return {
        "PUT worker": http.put("/api/v1/workers/default"),
        "GET worker": http.get("/api/v1/workers/default"),
        "GET workers": http.get("/api/v1/workers"),
        "DELETE worker": http.delete("/api/v1/workers/default"),
        "PUT environment": http.put("/api/v1/workers/default/environment", json=REQUIREMENTS),
        "GET environment": http.get("/api/v1/workers/default/environment"),
        "DELETE environment": http.delete("/api/v1/workers/default/environment"),
        "GET log": http.get("/api/v1/workers/default/log"),
    }


def assert_refused(http: httpx.Client, owner_text: str) -> None:
    for route, response in worker_routes(http).items():
        assert response.status_code == 403, (route, response.status_code, response.text)
        detail = response.json()["detail"]
        assert owner_text in detail, (route, detail)
        assert "one OS user" in detail and "read each other's credentials" in detail, detail
        assert "Kubernetes backend" in detail and "REXEC_LOCAL_USERS" in detail, detail


def test_the_first_user_to_create_a_worker_is_the_only_one_served(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    owner_file = stack.settings.data_dir / OWNER_FILE
    with running(stack) as users:
        # Before anyone owns the backend there is nothing of anybody to see.
        assert users["bob"].get("/api/v1/workers").json() == []
        assert not owner_file.exists()

        assert users["alice"].put("/api/v1/workers/default").status_code == 201
        assert json.loads(owner_file.read_text()) == {"user": "alice"}
        assert stat.S_IMODE(owner_file.stat().st_mode) == 0o600

        assert_refused(users["bob"], "serves only the user 'alice'")
        assert not (stack.settings.data_dir / "workers" / "bob").exists()
        # Refused on worker routes only: bob is still a valid user of this spawner.
        assert users["bob"].get("/api/v1/whoami").json()["user"] == "bob"
        # Alice is served as before.
        answers = worker_routes(users["alice"])
        assert {route: r.status_code for route, r in answers.items()} == {
            "PUT worker": 200,
            "GET worker": 200,
            "GET workers": 200,
            "DELETE worker": 200,
            "PUT environment": 200,
            "GET environment": 200,
            "DELETE environment": 200,
            "GET log": 200,
        }


def test_the_owner_is_kept_across_a_restart(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    with running(stack) as users:
        assert users["alice"].put("/api/v1/workers/default").status_code == 201
    # A new spawner on the same data directory: bob comes first this time, and is refused.
    with running(stack) as users:
        assert_refused(users["bob"], "serves only the user 'alice'")
        assert users["alice"].put("/api/v1/workers/default").status_code == 201


def test_listed_users_are_served_with_a_warning_and_others_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rexec_spawner")
    stack = make_stack(tmp_path, local_users=("alice", "bob"))
    with running(stack) as users:
        assert users["alice"].put("/api/v1/workers/default").status_code == 201
        assert users["bob"].put("/api/v1/workers/default").status_code == 201
        assert_refused(users["eve"], "serves only the users 'alice', 'bob' (REXEC_LOCAL_USERS)")
        assert "add you to REXEC_LOCAL_USERS" in users["eve"].get("/api/v1/workers").text
    assert not (stack.settings.data_dir / OWNER_FILE).exists(), "a list needs no owner"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 users ('alice', 'bob') who are NOT isolated" in w for w in warnings), warnings
    assert any("Kubernetes backend to isolate users" in w for w in warnings), warnings


def test_one_listed_user_needs_no_warning_and_wins_over_a_recorded_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rexec_spawner")
    first = make_stack(tmp_path)
    with running(first) as users:
        assert users["alice"].put("/api/v1/workers/default").status_code == 201
    listed = make_stack(tmp_path, local_users=("bob",))
    with running(listed) as users:
        assert users["bob"].put("/api/v1/workers/default").status_code == 201
        assert_refused(users["alice"], "serves only the user 'bob' (REXEC_LOCAL_USERS)")
    assert not [r for r in caplog.records if "NOT isolated" in r.getMessage()]


def test_an_unreadable_owner_record_stops_the_start_with_the_fix(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    owner_file = stack.settings.data_dir / OWNER_FILE
    owner_file.parent.mkdir(parents=True)
    for content in ("", "[]", '{"user": ""}', '{"user": 7}', "not json"):
        owner_file.write_text(content)
        with pytest.raises(ConfigError, match="delete it to let the next user"):
            create_app(stack.settings)


# A stand-in worker that prints its environment once, then stays up.
ENV_PRINTER = (
    sys.executable,
    "-c",
    "import json, os, time; print(json.dumps(dict(os.environ)), flush=True); time.sleep(60)",
)
# The spawner's settings and secrets, and anything else that is not the worker's.
WITHHELD = {
    "REXEC_HOME": "/secret/home",
    "REXEC_PROFILE": "/secret/profile.json",
    "REXEC_TOKEN": "secret-token-0123456789",
    "REXEC_TOKEN_FILE": "/secret/tokens.json",
    "REXEC_SIGNING_KEY_FILE": "/secret/signing.key",
    "REXEC_SPAWNER_DATA_DIR": "/secret/stack",
    "REXEC_WORKER_CREDENTIAL": "someone-elses-credential",
    "REXEC_ENV_BUILD_TIMEOUT": "5",
    "REXEC_SOMETHING_NEW": "x",
    "AUTH_API_URL": "https://idp.example.org/introspect",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "KUBECONFIG": "/secret/kubeconfig",
    "DATABASE_URL": "postgres://user:pw@db/x",
}
# What Python and pip need.
PASSED = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp",
    "http_proxy": "http://proxy.example.org:3128",
    "HTTPS_PROXY": "http://proxy.example.org:3128",
    "no_proxy": "localhost,127.0.0.1",
    "PIP_INDEX_URL": "https://pypi.example.org/simple",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    "CUDA_VISIBLE_DEVICES": "0",
    "TERM": "xterm",
    "USER": "someone",
    "LOGNAME": "someone",
    "PYTHONDONTWRITEBYTECODE": "1",
    "VIRTUAL_ENV": "/opt/venv",
    "REXEC_QUIET": "1",
}
# The worker's own REXEC_* variables, which the backend sets.
WORKER_REXEC = {
    "REXEC_ENV_ROOT",
    "REXEC_ENV_ALLOW_OPTIONS",
    "REXEC_ENV_ALLOW_URLS",
    "REXEC_ENV_ID",
    "REXEC_ENV_REQUIREMENTS",
    "REXEC_WORKER_CREDENTIAL_FILE",
    "REXEC_BROKER_PUBLIC_KEY",
    "REXEC_QUIET",
}


def test_workers_get_only_the_environment_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    stack = make_stack(
        tmp_path, ("alice",), worker_command=ENV_PRINTER, broker_public_key=public_key
    )
    with running(stack) as users:
        for name, value in {**WITHHELD, **PASSED}.items():
            monkeypatch.setenv(name, value)
        alice = users["alice"]
        assert alice.put("/api/v1/workers/default/environment", json=REQUIREMENTS).is_success
        assert alice.put("/api/v1/workers/default").status_code == 201
        deadline = time.monotonic() + 15
        while not (log := alice.get("/api/v1/workers/default/log").text).startswith("{"):
            assert time.monotonic() < deadline, f"the worker never printed its environment: {log}"
            time.sleep(0.05)
    env = json.loads(log.splitlines()[0])
    assert not set(WITHHELD) & set(env), sorted(set(WITHHELD) & set(env))
    assert {name: env.get(name) for name in PASSED} == PASSED
    assert {name for name in env if name.startswith("REXEC_")} <= WORKER_REXEC, sorted(env)
    assert env["REXEC_BROKER_PUBLIC_KEY"] == public_key
    assert env["REXEC_ENV_REQUIREMENTS"] == '["six==1.16.0"]' and env["REXEC_ENV_ID"]
    assert env["REXEC_WORKER_CREDENTIAL_FILE"].endswith("/credential")
    assert env["REXEC_ENV_ROOT"] == str(stack.settings.data_dir / "envs")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] and env["HOME"]
