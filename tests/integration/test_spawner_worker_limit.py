"""The limit on workers per user, through the HTTP API of a real spawner (uvicorn) whose local
backend starts real worker processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rexec_spawner.app import create_app
from rexec_spawner.backends.local import LocalBackend
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration

# A stand-in worker that stays up ("starting", so active) until it is stopped.
SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")
DEADLINE = 15.0


def make_stack(tmp_path: Path, limit: int) -> SpawnerFixture:
    return make_spawner_fixture(
        tmp_path,
        broker_backend_url=f"tcp://127.0.0.1:{free_port()}",
        worker_command=SLEEPER,
        max_workers_per_user=limit,
    )


@pytest.fixture
def stack(tmp_path: Path) -> SpawnerFixture:
    return make_stack(tmp_path, limit=2)


@pytest.fixture
def url(stack: SpawnerFixture) -> Iterator[str]:
    with serve(create_app(stack.settings), probe="/healthz") as base:
        yield base


def pid_of(status: dict[str, object]) -> int:
    first = status["progress"][0]["message"]  # type: ignore[index]
    return int(str(first).rsplit(" ", 1)[1].rstrip(")"))


def test_a_user_over_the_limit_gets_409_and_existing_workers_are_never_refused(
    stack: SpawnerFixture, url: str
) -> None:
    with httpx.Client(base_url=url, headers=stack.headers("alice"), timeout=10) as alice:
        assert alice.put("/api/v1/workers/w1").status_code == 201
        w2 = alice.put("/api/v1/workers/w2")
        assert w2.status_code == 201

        refused = alice.put("/api/v1/workers/w3")
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "you already have 2 workers (w1, w2)" in detail
        assert "DELETE /api/v1/workers/NAME" in detail
        assert alice.get("/api/v1/workers/w3").status_code == 404, "nothing was started"

        # A worker that already runs is never refused, however many there are.
        assert alice.put("/api/v1/workers/w1").status_code == 200
        # The limit is per user.
        bob = httpx.put(f"{url}/api/v1/workers/w1", headers=stack.headers("bob"), timeout=10)
        assert bob.status_code == 201

        # Deleting one makes room.
        assert alice.delete("/api/v1/workers/w1").json() == {"deleted": True}
        assert alice.put("/api/v1/workers/w3").status_code == 201

        # A worker that died no longer counts, even before anyone looked at it again.
        os.kill(pid_of(w2.json()), signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        created = alice.put("/api/v1/workers/w4")
        while created.status_code == 409:
            assert time.monotonic() < deadline, "the dead worker still counted"
            time.sleep(0.05)
            created = alice.put("/api/v1/workers/w4")
        assert created.status_code == 201
        states = {w["name"]: w["state"] for w in alice.get("/api/v1/workers").json()}
        assert states == {"w2": "failed", "w3": "starting", "w4": "starting"}


def test_concurrent_creations_never_overshoot_the_limit(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, limit=3)
    with serve(create_app(stack.settings), probe="/healthz") as url:
        barrier = threading.Barrier(10)
        answers: dict[str, int] = {}

        def create(name: str) -> None:
            barrier.wait(DEADLINE)
            response = httpx.put(
                f"{url}/api/v1/workers/{name}", headers=stack.headers("alice"), timeout=DEADLINE
            )
            answers[name] = response.status_code

        threads = [threading.Thread(target=create, args=(f"w{i}",)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert sorted(answers.values()) == [201] * 3 + [409] * 7, answers
        listed = httpx.get(f"{url}/api/v1/workers", headers=stack.headers("alice"), timeout=10)
        created = {name for name, status in answers.items() if status == 201}
        assert {w["name"] for w in listed.json()} == created


def test_no_limit_when_it_is_zero(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, limit=0)
    with (
        serve(create_app(stack.settings), probe="/healthz") as url,
        httpx.Client(base_url=url, headers=stack.headers("alice"), timeout=10) as alice,
    ):
        for i in range(10):
            assert alice.put(f"/api/v1/workers/w{i}").status_code == 201


def test_the_409_is_in_the_openapi_document(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    responses = schema["paths"]["/api/v1/workers/{name}"]["put"]["responses"]
    assert "409" in responses
    assert "REXEC_MAX_WORKERS_PER_USER" in responses["409"]["description"]


def test_the_backend_takes_the_limit_from_the_settings(stack: SpawnerFixture) -> None:
    backend = LocalBackend.from_settings(stack.settings, stack.signing_key)
    assert backend.max_workers_per_user == 2
