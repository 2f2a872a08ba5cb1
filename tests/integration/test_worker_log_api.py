"""``GET /api/v1/workers/{name}/log``: the last lines of the caller's own worker's output, from a
real spawner (uvicorn) whose local backend runs a real worker process."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rexec.client.spawner import SpawnerClient
from rexec.errors import SpawnError
from rexec_spawner.app import create_app
from rexec_spawner.backends.base import WorkerBackend, WorkerRecord
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration

# A stand-in worker that prints 300 numbered lines and stays up; the backend adds its options.
PRINTER = (
    sys.executable,
    "-c",
    "import time\nfor i in range(300): print(f'line {i}', flush=True)\ntime.sleep(60)",
)


@pytest.fixture
def stack(tmp_path: Path) -> SpawnerFixture:
    return make_spawner_fixture(
        tmp_path,
        broker_backend_url=f"tcp://127.0.0.1:{free_port()}",
        worker_command=PRINTER,
    )


@pytest.fixture
def url(stack: SpawnerFixture) -> Iterator[str]:
    with serve(create_app(stack.settings), probe="/healthz") as base:
        yield base


def wait_for_log(http: httpx.Client, headers: dict[str, str], last: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        response = http.get("/api/v1/workers/default/log", headers=headers)
        if response.status_code == 200 and response.text.endswith(last):
            return response.text
        time.sleep(0.1)
    raise AssertionError(f"the worker's log never ended with {last!r}")


def test_tail_returns_the_last_lines_as_text(stack: SpawnerFixture, url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        alice = stack.headers("alice")
        assert http.put("/api/v1/workers/default", headers=alice).status_code == 201
        wait_for_log(http, alice, "line 299")
        response = http.get("/api/v1/workers/default/log?tail=3", headers=alice)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.splitlines() == ["line 297", "line 298", "line 299"]
        # The default tail is 200 lines.
        default = http.get("/api/v1/workers/default/log", headers=alice).text.splitlines()
        assert len(default) == 200 and default[-1] == "line 299"


def test_a_user_never_reads_another_users_log(stack: SpawnerFixture, url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        alice, bob = stack.headers("alice"), stack.headers("bob")
        http.put("/api/v1/workers/default", headers=alice)
        wait_for_log(http, alice, "line 299")
        response = http.get("/api/v1/workers/default/log", headers=bob)
        assert response.status_code == 404
        assert "line" not in response.text.replace("no log", "")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/workers/default/log?tail=0", 422),
        ("/api/v1/workers/default/log?tail=100000", 422),
        ("/api/v1/workers/Bad..Name/log", 422),
    ],
)
def test_bad_requests_are_refused(stack: SpawnerFixture, url: str, path: str, status: int) -> None:
    response = httpx.get(f"{url}{path}", headers=stack.headers("alice"), timeout=10)
    assert response.status_code == status


def test_missing_token_is_401(url: str) -> None:
    assert httpx.get(f"{url}/api/v1/workers/default/log", timeout=10).status_code == 401


def test_client_reads_the_log_or_none(stack: SpawnerFixture, url: str) -> None:
    client = SpawnerClient(url, stack.tokens["alice"])
    try:
        assert client.worker_log("default") is None
        httpx.put(f"{url}/api/v1/workers/default", headers=stack.headers("alice"), timeout=10)
        deadline = time.monotonic() + 15
        text = None
        while time.monotonic() < deadline:
            text = client.worker_log("default", tail=2)
            if text == "line 298\nline 299":
                break
            time.sleep(0.1)
        assert text == "line 298\nline 299"
    finally:
        client.close()


class NoLogsBackend(WorkerBackend):
    """A fake backend that has no workers and keeps the interface's default ``log``."""

    async def ensure(self, user: str, name: str) -> WorkerRecord:
        raise NotImplementedError

    async def get(self, user: str, name: str) -> WorkerRecord | None:
        return None

    async def list(self, user: str) -> list[WorkerRecord]:
        return []

    async def delete(self, user: str, name: str) -> bool:
        return False

    async def close(self) -> None:
        pass


def test_a_backend_without_logs_answers_503_saying_where_to_look(stack: SpawnerFixture) -> None:
    with serve(create_app(stack.settings, NoLogsBackend()), probe="/healthz") as base:
        client = SpawnerClient(base, stack.tokens["alice"])
        try:
            with pytest.raises(SpawnError, match="cannot show worker logs"):
                client.worker_log("default")
        finally:
            client.close()
