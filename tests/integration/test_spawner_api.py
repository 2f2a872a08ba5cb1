"""The spawner's HTTP API under a real uvicorn server, called with real HTTP."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from rexec.auth import AuthSettings
from rexec.errors import ConfigError
from rexec_spawner.app import create_app
from tests.support.idp import IdentityProvider
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> SpawnerFixture:
    # Nothing listens on the broker port: these tests are about the API, not about workers.
    return make_spawner_fixture(
        tmp_path,
        users={"alice": ("science",), "bob": ("science",), "eve": ("visitors",)},
        broker_backend_url=f"tcp://127.0.0.1:{free_port()}",
        broker_public_key="rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
    )


@pytest.fixture
def client(stack: SpawnerFixture) -> Iterator[httpx.Client]:
    with (
        serve(create_app(stack.settings), probe="/healthz") as url,
        httpx.Client(base_url=url, timeout=10.0) as http,
    ):
        yield http


def test_healthz_needs_no_token(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path", ["/api/v1/whoami", "/api/v1/broker", "/api/v1/workers", "/api/v1/workers/default"]
)
def test_missing_token_is_401_with_a_bearer_challenge(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "token-only"])
def test_malformed_authorization_is_401(client: httpx.Client, header: str) -> None:
    response = client.get("/api/v1/whoami", headers={"Authorization": header})
    assert response.status_code == 401
    assert "Bearer <token>" in response.json()["detail"]


def test_refused_token_is_401_and_not_echoed(client: httpx.Client) -> None:
    secret = "made-up-token-1234567890"
    response = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert secret not in response.text


def test_token_is_not_accepted_from_the_query_string(
    client: httpx.Client, stack: SpawnerFixture
) -> None:
    response = client.get("/api/v1/whoami", params={"token": stack.tokens["alice"]})
    assert response.status_code == 401


def test_whoami_and_broker(client: httpx.Client, stack: SpawnerFixture) -> None:
    response = client.get("/api/v1/whoami", headers=stack.headers("alice"))
    assert response.json() == {"user": "alice", "groups": ["science"]}
    response = client.get("/api/v1/broker", headers=stack.headers("alice"))
    assert response.json() == {
        "url": stack.settings.broker_url,
        "public_key": stack.settings.broker_public_key,
    }


def test_group_not_allowed_is_403(tmp_path: Path) -> None:
    fixture = make_spawner_fixture(tmp_path, users={"alice": ("science",), "eve": ("visitors",)})
    auth = replace(fixture.settings.auth, allowed_groups=("science",))
    with serve(create_app(replace(fixture.settings, auth=auth)), probe="/healthz") as url:
        refused = httpx.get(f"{url}/api/v1/whoami", headers=fixture.headers("eve"))
        allowed = httpx.get(f"{url}/api/v1/whoami", headers=fixture.headers("alice"))
    assert refused.status_code == 403
    assert "ask an operator" in refused.json()["detail"]
    assert fixture.tokens["eve"] not in refused.text
    assert allowed.status_code == 200


def test_identity_provider_down_is_503(tmp_path: Path) -> None:
    auth = AuthSettings(api_url=f"http://127.0.0.1:{free_port()}/introspect", timeout=2.0)
    fixture = make_spawner_fixture(tmp_path, users={}, auth=auth)
    with serve(create_app(fixture.settings), probe="/healthz") as url:
        secret = "some-token-123456789"
        response = httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 503
    assert "could not be reached" in response.json()["detail"]
    assert secret not in response.text


def test_slow_identity_provider_does_not_block_other_requests(tmp_path: Path) -> None:
    idp = IdentityProvider()
    idp.add("cached-token-123456", "bob", ["science"])
    with serve(idp.make_app()) as idp_url:
        auth = AuthSettings(api_url=f"{idp_url}/introspect", timeout=10.0)
        fixture = make_spawner_fixture(tmp_path, users={}, auth=auth)
        with serve(create_app(fixture.settings), probe="/healthz") as url:
            bob = {"Authorization": "Bearer cached-token-123456"}
            assert httpx.get(f"{url}/api/v1/whoami", headers=bob).json()["user"] == "bob"
            idp.delay = 2.0
            # A flood of unknown tokens from one address: some are checked (slowly), the rest
            # are refused at once instead of queueing without bound.
            slow: list[httpx.Response] = []
            threads = [
                threading.Thread(
                    target=lambda t: slow.append(whoami(url, t)), args=(f"slow-{i:06d}",)
                )
                for i in range(45)
            ]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 5.0
            while idp.requests < 4:
                assert time.monotonic() < deadline, "the slow requests never reached the IdP"
                time.sleep(0.01)
            started = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=5.0).status_code == 200
            assert httpx.get(f"{url}/api/v1/whoami", headers=bob, timeout=5.0).is_success
            assert httpx.get(f"{url}/api/v1/workers", headers=bob, timeout=5.0).is_success
            assert time.monotonic() - started < 1.0, "cached and anonymous requests waited"
            for thread in threads:
                thread.join(30.0)
            assert len(slow) == 45
            statuses = [response.status_code for response in slow]
            assert set(statuses) <= {401, 503} and statuses.count(503) >= 20, statuses
            busy = [response for response in slow if response.status_code == 503]
            assert all(r.headers.get("retry-after") for r in busy)
            assert "retry" in busy[0].json()["detail"]


def whoami(url: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/api/v1/whoami", headers=headers, timeout=15.0)


@pytest.mark.parametrize(
    "name", ["Default", "-x", "x-", "a_b", "a.b", "x" * 33, "%C3%A9t%C3%A9", "a%20b"]
)
def test_invalid_worker_name_is_422_naming_the_rule(
    client: httpx.Client, stack: SpawnerFixture, name: str
) -> None:
    for method in ("PUT", "GET", "DELETE"):
        response = client.request(method, f"/api/v1/workers/{name}", headers=stack.headers("alice"))
        assert response.status_code == 422, (method, name, response.text)
        assert "lowercase letters, digits and '-'" in response.json()["detail"]


def test_invalid_name_without_token_is_still_401(client: httpx.Client) -> None:
    assert client.put("/api/v1/workers/Bad_Name").status_code == 401


def test_put_is_idempotent_and_reports_the_worker(
    client: httpx.Client, stack: SpawnerFixture
) -> None:
    headers = stack.headers("alice")
    first = client.put("/api/v1/workers/default", headers=headers)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["user"] == "alice" and body["name"] == "default"
    assert body["state"] in {"starting", "ready", "stopped", "failed"}
    assert body["broker"] == {
        "url": stack.settings.broker_url,
        "public_key": stack.settings.broker_public_key,
    }
    assert body["progress"] and {"time", "message"} <= set(body["progress"][0])
    if body["state"] == "starting":
        again = client.put("/api/v1/workers/default", headers=headers)
        assert again.status_code == 200
        assert again.json()["created_at"] == body["created_at"]
    assert client.get("/api/v1/workers/default", headers=headers).json()["user"] == "alice"
    assert client.delete("/api/v1/workers/default", headers=headers).json() == {"deleted": True}
    assert client.delete("/api/v1/workers/default", headers=headers).json() == {"deleted": False}
    missing = client.get("/api/v1/workers/default", headers=headers)
    assert missing.status_code == 404
    assert "PUT /api/v1/workers/default" in missing.json()["detail"]


def test_users_only_see_and_affect_their_own_workers(
    client: httpx.Client, stack: SpawnerFixture
) -> None:
    alice, bob = stack.headers("alice"), stack.headers("bob")
    assert client.put("/api/v1/workers/shared-name", headers=alice).status_code == 201
    assert client.get("/api/v1/workers/shared-name", headers=bob).status_code == 404
    assert client.get("/api/v1/workers", headers=bob).json() == []
    assert client.delete("/api/v1/workers/shared-name", headers=bob).json() == {"deleted": False}
    mine = client.get("/api/v1/workers", headers=alice).json()
    assert [(w["user"], w["name"]) for w in mine] == [("alice", "shared-name")]
    # Bob's worker of the same name is a different worker.
    assert client.put("/api/v1/workers/shared-name", headers=bob).status_code == 201
    theirs = client.get("/api/v1/workers/shared-name", headers=bob).json()
    assert theirs["user"] == "bob"
    assert client.get("/api/v1/workers/shared-name", headers=alice).json()["user"] == "alice"


def test_openapi_and_docs_are_served(client: httpx.Client) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/workers/{name}", "/api/v1/workers", "/api/v1/whoami"} <= set(paths)
    assert "HTTPBearer" in schema.json()["components"]["securitySchemes"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_missing_signing_key_fails_fast_with_the_fix(tmp_path: Path) -> None:
    fixture = make_spawner_fixture(tmp_path, signing_key_path=tmp_path / "absent.key")
    with pytest.raises(ConfigError, match="REXEC_SIGNING_KEY_FILE"):
        create_app(fixture.settings)


def test_tokens_never_reach_the_logs(
    tmp_path: Path, stack: SpawnerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = "refused-token-0123456789"
    with serve(create_app(stack.settings), probe="/healthz") as url:
        for token in (stack.tokens["alice"], refused):
            headers = {"Authorization": f"Bearer {token}"}
            httpx.get(f"{url}/api/v1/whoami", headers=headers)
            httpx.put(f"{url}/api/v1/workers/default", headers=headers)
    down = AuthSettings(api_url=f"http://127.0.0.1:{free_port()}/introspect", timeout=1.0)
    with serve(create_app(replace(stack.settings, auth=down)), probe="/healthz") as url:
        httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {refused}"})
    assert "cannot validate a token" in caplog.text, "the logs were captured"
    for token in (stack.tokens["alice"], refused):
        assert token not in caplog.text


def test_a_token_flood_from_one_address_does_not_delay_a_user_at_another(tmp_path: Path) -> None:
    idp = IdentityProvider()
    idp.add("fresh-token-123456", "bob", ["science"])
    with serve(idp.make_app()) as idp_url:
        auth = AuthSettings(api_url=f"{idp_url}/introspect", timeout=10.0)
        fixture = make_spawner_fixture(tmp_path, users={}, auth=auth)
        with serve(create_app(fixture.settings), probe="/healthz") as url:
            idp.delay = 0.5
            attacker = httpx.Client(
                transport=httpx.HTTPTransport(local_address="127.0.0.2"),
                limits=httpx.Limits(max_connections=300),
            )
            flood = [
                threading.Thread(
                    target=lambda i=i: attacker.get(
                        f"{url}/api/v1/whoami",
                        headers={"Authorization": f"Bearer flood-{i:06d}"},
                        timeout=30.0,
                    )
                )
                for i in range(300)
            ]
            for thread in flood:
                thread.start()
            time.sleep(0.2)
            started = time.monotonic()
            bob = {"Authorization": "Bearer fresh-token-123456"}  # not cached yet
            assert (
                httpx.get(f"{url}/api/v1/whoami", headers=bob, timeout=10).json()["user"] == "bob"
            )
            assert time.monotonic() - started < 1.5, "a user waited behind another's flood"
            for thread in flood:
                thread.join(30.0)
            attacker.close()
