"""Request bodies: authenticated before any byte is read, and capped in size.

A spawner runs in its own process (real settings from the environment, real uvicorn) so its
memory can be read from ``/proc``; a raw socket client streams large bodies at it, stops as soon
as an answer arrives, and reports how much it managed to send.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from rexec.auth import AuthSettings
from rexec_spawner.app import create_app
from tests.support.idp import IdentityProvider
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture
from tests.support.spawner_process import SpawnerProcess, spawner_process

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
HUGE = 200 * MIB
CHUNK = 64 * 1024
MAX_GROWTH_MIB = 20
ENVIRONMENT = "/api/v1/workers/default/environment"
PUSH_DEADLINE = 60.0


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client got out before the answer came (or the server closed)


def body_pieces(total: int) -> Iterator[bytes]:
    """A valid JSON request body of exactly ``total`` bytes, in pieces of at most CHUNK bytes."""
    head, tail = b'{"requirements": "', b'"}'
    yield head
    filler = b"a" * CHUNK
    left = total - len(head) - len(tail)
    while left > 0:
        piece = filler if left >= CHUNK else filler[:left]
        left -= len(piece)
        yield piece
    yield tail


def push(
    port: int, total: int, headers: dict[str, str], chunked: bool, path: str = ENVIRONMENT
) -> RawAnswer:
    """PUT a ``total``-byte body to ``path``, stopping early once the server answers."""
    deadline = time.monotonic() + PUSH_DEADLINE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines.append("Content-Type: application/json")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        for piece in body_pieces(total):
            assert time.monotonic() < deadline, f"still sending after {PUSH_DEADLINE} s"
            if select.select([sock], [], [], 0)[0]:
                break  # answered (or closed) before the body was all sent
            framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            try:
                sock.sendall(framed)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        return read_answer(sock, sent, deadline)


def read_answer(sock: socket.socket, sent: int, deadline: float) -> RawAnswer:
    data = b""
    while time.monotonic() < deadline:
        try:
            received = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not received:
            break
        data += received
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            fields = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            headers = {name.lower(): value for name, value in fields.items()}
            if len(body) >= int(headers.get("content-length", "-1")):
                status = int(head.split(b" ", 2)[1])
                return RawAnswer(status, headers, body, sent)
    raise AssertionError(f"no complete answer after sending {sent} bytes; got {data[:200]!r}")


class PeakMemory:
    """The highest RSS of a process while the block runs, from ``/proc`` (MiB above the start)."""

    def __init__(self, spawner: SpawnerProcess) -> None:
        self.spawner = spawner
        self.start_kib = 0
        self.peak_kib = 0
        self._peak_reset = False
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak_kib = max(self.peak_kib, self.spawner.memory_kib("VmRSS"))

    def __enter__(self) -> PeakMemory:
        self.start_kib = self.peak_kib = self.spawner.memory_kib("VmRSS")
        self._peak_reset = self.spawner.reset_peak()
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._sampler.join(5)
        if self._peak_reset:  # the kernel's own high-water mark catches what sampling missed
            self.peak_kib = max(self.peak_kib, self.spawner.memory_kib("VmHWM"))

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


@pytest.fixture
def fixture(tmp_path: Path) -> SpawnerFixture:
    # Nothing listens on the broker port: these tests are about the API, not about workers.
    return make_spawner_fixture(
        tmp_path, users={"alice": ()}, broker_backend_url=f"tcp://127.0.0.1:{free_port()}"
    )


def process_env(fixture: SpawnerFixture, **extra: str) -> dict[str, str]:
    settings = fixture.settings
    assert settings.auth.token_file is not None
    return {
        **os.environ,
        "REXEC_TOKEN_FILE": str(settings.auth.token_file),
        "REXEC_SIGNING_KEY_FILE": str(settings.signing_key_path),
        "REXEC_SPAWNER_DATA_DIR": str(settings.data_dir),
        "REXEC_BROKER_BACKEND_URL": settings.broker_backend_url,
        **extra,
    }


@pytest.fixture
def spawner(fixture: SpawnerFixture, tmp_path: Path) -> Iterator[SpawnerProcess]:
    with spawner_process(process_env(fixture), tmp_path / "spawner.log") as running:
        # Warm up (imports, caches) with the normal request, which must keep working.
        put = httpx.put(
            running.url + ENVIRONMENT,
            json={"requirements": "six==1.16.0\n"},
            headers=fixture.headers("alice"),
            timeout=10,
        )
        assert put.status_code == 200, put.text
        yield running


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("authorization", "expected"),
    [(None, "Authorization: Bearer"), ("Bearer made-up-token-0123456789", "not valid")],
    ids=["no-token", "refused-token"],
)
def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(
    spawner: SpawnerProcess, chunked: bool, authorization: str | None, expected: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with PeakMemory(spawner) as memory:
        answer = push(spawner.port, HUGE, headers, chunked)
    print(
        f"\nunauthenticated {HUGE // MIB} MiB ({'chunked' if chunked else 'content-length'}): "
        f"{answer.status}, {answer.sent / MIB:.1f} MiB sent, RSS {memory.start_kib / 1024:.0f} "
        f"-> peak {memory.peak_kib / 1024:.0f} MiB"
    )
    assert answer.status == 401, answer.body
    assert expected in answer.body.decode()
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert memory.growth_mib < MAX_GROWTH_MIB, f"the spawner grew by {memory.growth_mib:.0f} MiB"
    assert spawner.process.poll() is None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_authenticated_body_over_the_cap_is_413_without_being_held(
    spawner: SpawnerProcess, fixture: SpawnerFixture, chunked: bool
) -> None:
    with PeakMemory(spawner) as memory:
        answer = push(spawner.port, HUGE, fixture.headers("alice"), chunked)
    print(
        f"\nauthenticated {HUGE // MIB} MiB ({'chunked' if chunked else 'content-length'}): "
        f"{answer.status}, {answer.sent / MIB:.1f} MiB sent, RSS {memory.start_kib / 1024:.0f} "
        f"-> peak {memory.peak_kib / 1024:.0f} MiB"
    )
    assert answer.status == 413, answer.body
    detail = answer.body.decode()
    assert "1048576 bytes" in detail and "REXEC_SPAWNER_MAX_BODY_BYTES" in detail
    assert answer.sent < HUGE, "the spawner read the whole body before answering"
    assert memory.growth_mib < MAX_GROWTH_MIB, f"the spawner grew by {memory.growth_mib:.0f} MiB"
    # The spawner still serves the normal request afterwards.
    got = httpx.get(spawner.url + ENVIRONMENT, headers=fixture.headers("alice"), timeout=10)
    assert got.status_code == 200 and got.json()["requirements"] == ["six==1.16.0"]


def test_the_cap_is_a_setting(fixture: SpawnerFixture, tmp_path: Path) -> None:
    env = process_env(fixture, REXEC_SPAWNER_MAX_BODY_BYTES="4096")
    with spawner_process(env, tmp_path / "spawner.log") as running:
        for chunked in (False, True):
            over = push(running.port, 5000, fixture.headers("alice"), chunked)
            assert over.status == 413 and "4096 bytes" in over.body.decode()
        under = push(running.port, 4000, fixture.headers("alice"), chunked=True)
        # Read in full and handed to the route ("aaa...": a valid requirement of its own).
        assert under.status == 200 and under.sent == 4000, under.body


def test_bodies_get_the_same_auth_answers_as_the_routes(tmp_path: Path) -> None:
    fixture = make_spawner_fixture(tmp_path, users={"alice": ("science",), "eve": ("visitors",)})
    auth = replace(fixture.settings.auth, allowed_groups=("science",))
    body = {"requirements": "six"}
    with serve(create_app(replace(fixture.settings, auth=auth)), probe="/healthz") as url:
        missing = httpx.put(url + ENVIRONMENT, json=body)
        malformed = httpx.put(url + ENVIRONMENT, json=body, headers={"Authorization": "Basic x"})
        outsider = httpx.put(url + ENVIRONMENT, json=body, headers=fixture.headers("eve"))
        allowed = httpx.put(url + ENVIRONMENT, json=body, headers=fixture.headers("alice"))
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert malformed.status_code == 401 and "Bearer <token>" in malformed.json()["detail"]
    assert outsider.status_code == 403 and "ask an operator" in outsider.json()["detail"]
    assert fixture.tokens["eve"] not in outsider.text
    assert allowed.status_code == 200, allowed.text

    down = AuthSettings(api_url=f"http://127.0.0.1:{free_port()}/introspect", timeout=2.0)
    with serve(create_app(replace(fixture.settings, auth=down)), probe="/healthz") as url:
        unavailable = httpx.put(url + ENVIRONMENT, json=body, headers=fixture.headers("alice"))
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "5"
    assert "could not be reached" in unavailable.json()["detail"]


def test_a_token_sent_with_a_body_is_validated_once(tmp_path: Path) -> None:
    idp = IdentityProvider()
    idp.add("alice-token-0123456789", "alice", ["science"])
    with serve(idp.make_app()) as idp_url:
        # No cache: every validation reaches the identity provider, so it counts them.
        auth = AuthSettings(api_url=f"{idp_url}/introspect", cache_ttl=0)
        fixture = make_spawner_fixture(tmp_path, users={}, auth=auth)
        with serve(create_app(fixture.settings), probe="/healthz") as url:
            before = idp.requests
            response = httpx.put(
                url + ENVIRONMENT,
                json={"requirements": "six==1.16.0"},
                headers={"Authorization": "Bearer alice-token-0123456789"},
            )
            assert response.status_code == 200, response.text
            assert idp.requests == before + 1
