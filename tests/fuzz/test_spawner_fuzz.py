"""The spawner under random attack over HTTP: it stays up, never answers 500, a legitimate user
gets answers within a second, and its memory stays bounded."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.fuzz.attacks import attacker_address
from tests.fuzz.conftest import FUZZ_SECONDS
from tests.support.servers import free_port
from tests.support.spawner import make_spawner_fixture
from tests.support.spawner_process import spawner_process

MAX_GROWTH_MIB = 150
ANSWER_WITHIN = 1.0
PATHS = [
    "/api/v1/workers/default",
    "/api/v1/workers/default/environment",
    "/api/v1/workers/default/log",
    "/api/v1/workers",
    "/api/v1/whoami",
    "/api/v1/broker",
    "/api/v1/workers/..%2f..%2fetc",
    "/api/v1/workers/" + "a" * 300,
    "/api/v1/workers/default%0A",
    "/healthz",
    "/openapi.json",
    "/nowhere",
]


def _token(rng: random.Random, good: str) -> str | None:
    return rng.choice(
        [
            None,
            f"Bearer {good}",
            "Bearer " + "x" * rng.choice([1, 20, 9000]),
            "Basic dXNlcjpwYXNz",
            "Bearer",
            f"Bearer flood-{rng.randrange(10**9)}",
        ]
    )


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return b""
    if kind == 1:
        return b'{"requirements": "numpy>=1.26\\n$(rm -rf /)\\n"}'
    if kind == 2:
        return b'{"requirements": ["' + b"a" * rng.randrange(70_000) + b'"]}'
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(2000)))
    if kind == 4:
        return b"[" * 5000 + b"]" * 5000
    return b'{"requirements": 7}'


def _request(url: str, rng: random.Random, good: str) -> int:
    headers = {}
    token = _token(rng, good)
    if token is not None:
        headers["Authorization"] = token
    method = rng.choice(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    try:
        transport = httpx.HTTPTransport(local_address=attacker_address(rng))
        with httpx.Client(transport=transport, timeout=10) as client:
            response = client.request(
                method, url + rng.choice(PATHS), headers=headers, content=_body(rng)
            )
        return response.status_code
    except httpx.HTTPError:
        return 0


def _slow_body(url: str, rng: random.Random) -> None:
    """A body that arrives a byte at a time, or never finishes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.bind((attacker_address(rng), 0))
    sock.settimeout(2)
    try:
        sock.connect((host, int(port)))
        sock.sendall(
            b"PUT /api/v1/workers/default/environment HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100000\r\nAuthorization: Bearer nope-nope-nope\r\n\r\n"
        )
        for _ in range(rng.randrange(5)):
            sock.sendall(b"{")
            time.sleep(0.05)
    except OSError:
        pass
    finally:
        sock.close()


def test_the_spawner_survives_random_requests_and_keeps_serving(tmp_path: Path, rng: random.Random):
    fixture = make_spawner_fixture(
        tmp_path, users={"alice": ()}, broker_backend_url=f"tcp://127.0.0.1:{free_port()}"
    )
    settings = fixture.settings
    env = {
        **os.environ,
        "REXEC_TOKEN_FILE": str(settings.auth.token_file),
        "REXEC_SIGNING_KEY_FILE": str(settings.signing_key_path),
        "REXEC_SPAWNER_DATA_DIR": str(settings.data_dir),
        "REXEC_BROKER_BACKEND_URL": settings.broker_backend_url,
        "REXEC_LOCAL_USERS": "alice",
    }
    good = fixture.tokens["alice"]
    with spawner_process(env, tmp_path / "spawner.log") as spawner:
        alice = httpx.Client(headers=fixture.headers("alice"), timeout=10)
        assert alice.get(f"{spawner.url}/api/v1/whoami").status_code == 200
        baseline = spawner.memory_kib() / 1024
        statuses: dict[int, int] = {}
        worst = 0.0
        end = time.monotonic() + FUZZ_SECONDS
        rounds = 0
        while time.monotonic() < end:
            threads = [
                threading.Thread(target=_slow_body, args=(spawner.url, rng))
                for _ in range(rng.randrange(3))
            ]
            for thread in threads:
                thread.start()
            for _ in range(rng.randrange(1, 15)):
                status = _request(spawner.url, rng, good)
                statuses[status] = statuses.get(status, 0) + 1
            for thread in threads:
                thread.join(10)
            rounds += 1
            assert spawner.process.poll() is None, spawner.log()[-3000:]
            started = time.monotonic()
            assert alice.get(f"{spawner.url}/api/v1/workers").status_code == 200
            worst = max(worst, time.monotonic() - started)
            grown = spawner.memory_kib() / 1024 - baseline
            assert grown < MAX_GROWTH_MIB, f"the spawner grew {grown:.0f} MiB"
        print(f"\n{rounds} rounds, answers {statuses}; slowest legitimate answer {worst:.3f} s")
        assert 500 not in statuses, spawner.log()[-5000:]
        assert worst < ANSWER_WITHIN
        assert "Traceback" not in spawner.log(), spawner.log()[-5000:]
        alice.close()
