"""The local backend with real worker processes (``python -m rexec worker``) and a real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from rexec.auth import AuthSettings, make_validator
from rexec.credentials import create_key_file
from rexec.transport import create_curve_keypair
from rexec_broker.config import BrokerSettings
from rexec_broker.server import Broker
from rexec_spawner.app import create_app
from rexec_spawner.backends.base import WorkerRecord
from rexec_spawner.backends.local import LocalBackend
from tests.support.servers import free_port, serve
from tests.support.spawner import make_spawner_fixture

pytestmark = pytest.mark.integration

READY_DEADLINE = 30.0
T = TypeVar("T")


@dataclass
class RunningBroker:
    backend_url: str
    key_path: Path
    key: bytes
    public_key: str | None = None


@contextmanager
def run_broker(directory: Path, curve: bool = False) -> Iterator[RunningBroker]:
    """A real broker in a thread, on random loopback ports, optionally with CurveZMQ."""
    key_path = directory / "signing.key"
    key = create_key_file(key_path)
    token_file = directory / "tokens.json"
    token_file.write_text('{"tokens": []}')
    public_key, secret_path = create_curve_keypair(directory) if curve else (None, None)
    settings = BrokerSettings(
        signing_key_path=key_path,
        auth=AuthSettings(token_file=token_file),
        frontend="tcp://127.0.0.1:*",
        backend="tcp://127.0.0.1:*",
        curve_secret_key_path=secret_path,
    )
    server = Broker(settings, make_validator(settings.auth), key)
    thread = threading.Thread(target=server.serve_forever, name="broker", daemon=True)
    thread.start()
    try:
        yield RunningBroker(server.backend_url, key_path, key, public_key)
    finally:
        server.stop()
        thread.join(10.0)
        assert not thread.is_alive(), "broker did not stop within 10 s"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    with run_broker(tmp_path) as running:
        yield running


def make_backend(tmp_path: Path, broker_url: str, key: bytes, **options: Any) -> LocalBackend:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "stack",
        "signing_key": key,
        "broker_backend_url": broker_url,
        "broker_public_key": None,
        "worker_command": (sys.executable, "-m", "rexec", "worker"),
        "ready_timeout": READY_DEADLINE,
        # Several users on purpose, so the tests show their workers apart.
        "local_users": ("alice", "bob"),
    }
    values.update(options)
    return LocalBackend(**values)


def run(scenario: Callable[[LocalBackend], Awaitable[T]], backend: LocalBackend) -> T:
    """Run ``scenario`` on a fresh event loop; the backend is always closed afterwards."""

    async def main() -> T:
        try:
            return await scenario(backend)
        finally:
            await asyncio.wait_for(backend.close(), 20.0)

    return asyncio.run(main())


async def wait_state(
    backend: LocalBackend, user: str, name: str, states: set[str], timeout: float = READY_DEADLINE
) -> WorkerRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await backend.get(user, name)
        if record is not None and record.state in states:
            return record
        if time.monotonic() >= deadline:
            raise AssertionError(f"worker not in {states} after {timeout} s: {record}")
        await asyncio.sleep(0.05)


def pid_of(record: WorkerRecord) -> int:
    message = record.progress[0].message
    assert message.startswith("starting worker process (pid ")
    return int(message.rsplit(" ", 1)[1].rstrip(")"))


def test_worker_becomes_ready_then_is_deleted(tmp_path: Path, broker: RunningBroker) -> None:
    backend = make_backend(tmp_path, broker.backend_url, broker.key)

    async def scenario(backend: LocalBackend) -> None:
        record = await backend.ensure("alice", "default")
        assert record.state == "starting"
        pid = pid_of(record)
        assert (await backend.ensure("alice", "default")).instance == record.instance

        ready = await wait_state(backend, "alice", "default", {"ready", "failed", "stopped"})
        assert ready.state == "ready", ready.error
        messages = [event.message for event in ready.progress]
        assert messages[-1] == "worker connected to the broker"
        assert ready.info["pid"] == pid
        assert ready.info["python"] == ".".join(map(str, sys.version_info[:3]))

        directory = backend.worker_dir("alice", "default")
        credential = directory / "credential"
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        secret = credential.read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert secret not in cmdline, "the credential must never be on the command line"
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
        assert f"REXEC_WORKER_CREDENTIAL_FILE={credential}" in environ

        assert await backend.delete("alice", "default") is True
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not credential.exists()
        assert await backend.get("alice", "default") is None
        assert await backend.delete("alice", "default") is False

    run(scenario, backend)


def test_worker_gets_the_broker_public_key_and_registers_over_curve(tmp_path: Path) -> None:
    with run_broker(tmp_path, curve=True) as broker:
        assert broker.public_key
        backend = make_backend(
            tmp_path, broker.backend_url, broker.key, broker_public_key=broker.public_key
        )

        async def scenario(backend: LocalBackend) -> None:
            record = await backend.ensure("alice", "default")
            ready = await wait_state(backend, "alice", "default", {"ready", "failed", "stopped"})
            assert ready.state == "ready", ready.error
            environ = Path(f"/proc/{pid_of(record)}/environ").read_bytes().split(b"\0")
            assert f"REXEC_BROKER_PUBLIC_KEY={broker.public_key}".encode() in environ

        run(scenario, backend)


def test_killed_worker_fails_and_the_next_ensure_starts_a_fresh_one(
    tmp_path: Path, broker: RunningBroker
) -> None:
    backend = make_backend(tmp_path, broker.backend_url, broker.key)

    async def scenario(backend: LocalBackend) -> None:
        first = await backend.ensure("alice", "default")
        await wait_state(backend, "alice", "default", {"ready"})
        os.kill(pid_of(first), signal.SIGKILL)
        failed = await wait_state(backend, "alice", "default", {"failed", "stopped"})
        assert failed.state == "failed"
        assert failed.error is not None and "SIGKILL" in failed.error
        assert "worker.log" in failed.error, "the error points at the log"

        second = await backend.ensure("alice", "default")
        assert second.instance != first.instance
        assert pid_of(second) != pid_of(first)
        ready = await wait_state(backend, "alice", "default", {"ready", "failed"})
        assert ready.state == "ready", ready.error
        assert ready.error is None

    run(scenario, backend)


def test_ensure_right_after_a_death_starts_a_new_worker(
    tmp_path: Path, broker: RunningBroker
) -> None:
    # A client that saw its worker die asks again at once; the monitor may not have polled yet
    # (here it effectively never does), yet the dead worker must not be handed back as ready.
    backend = make_backend(tmp_path, broker.backend_url, broker.key, poll_interval=60.0)

    async def scenario(backend: LocalBackend) -> None:
        first = await backend.ensure("alice", "default")
        await wait_state(backend, "alice", "default", {"ready"})
        pid = pid_of(first)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        # Until the process can be reaped (WNOWAIT: look, do not reap; the backend must do it).
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            assert time.monotonic() < deadline, "the killed worker did not exit"
            await asyncio.sleep(0.01)
        second = await backend.ensure("alice", "default")
        assert second.instance != first.instance
        assert second.state == "starting"

    run(scenario, backend)


def test_worker_stopped_by_sigterm_is_stopped(tmp_path: Path, broker: RunningBroker) -> None:
    backend = make_backend(tmp_path, broker.backend_url, broker.key)

    async def scenario(backend: LocalBackend) -> None:
        record = await backend.ensure("alice", "default")
        await wait_state(backend, "alice", "default", {"ready"})
        os.kill(pid_of(record), signal.SIGTERM)
        stopped = await wait_state(backend, "alice", "default", {"stopped", "failed"})
        assert stopped.state == "stopped", stopped.error
        assert not (backend.worker_dir("alice", "default") / "credential").exists()

    run(scenario, backend)


def test_close_stops_every_worker(tmp_path: Path, broker: RunningBroker) -> None:
    backend = make_backend(tmp_path, broker.backend_url, broker.key)

    async def scenario(backend: LocalBackend) -> list[int]:
        records = [await backend.ensure(user, "w1") for user in ("alice", "bob")]
        for user in ("alice", "bob"):
            await wait_state(backend, user, "w1", {"ready"})
        return [pid_of(record) for record in records]

    pids = run(scenario, backend)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_that_cannot_reach_the_broker_fails_after_the_ready_timeout(
    tmp_path: Path,
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    backend = make_backend(tmp_path, url, b"k" * 32, ready_timeout=2.0)

    async def scenario(backend: LocalBackend) -> None:
        record = await backend.ensure("alice", "default")
        failed = await wait_state(backend, "alice", "default", {"failed", "stopped", "ready"}, 15)
        assert failed.state == "failed"
        assert failed.error is not None
        assert f"did not connect to the broker at {url} within 2 s" in failed.error
        with pytest.raises(ProcessLookupError):
            os.kill(pid_of(record), 0)

    run(scenario, backend)


def test_missing_worker_command_fails_with_the_fix(tmp_path: Path) -> None:
    backend = make_backend(
        tmp_path, "tcp://127.0.0.1:1", b"k" * 32, worker_command=(str(tmp_path / "no-python"),)
    )

    async def scenario(backend: LocalBackend) -> None:
        record = await backend.ensure("alice", "default")
        assert record.state == "failed"
        assert record.error is not None and "REXEC_WORKER_COMMAND" in record.error

    run(scenario, backend)


def test_crashing_command_reports_its_exit_code_and_last_log_lines(tmp_path: Path) -> None:
    crash = (sys.executable, "-c", "import sys; print('it went wrong here'); sys.exit(3)")
    backend = make_backend(tmp_path, "tcp://127.0.0.1:1", b"k" * 32, worker_command=crash)

    async def scenario(backend: LocalBackend) -> None:
        await backend.ensure("alice", "default")
        failed = await wait_state(backend, "alice", "default", {"failed", "stopped"}, 15)
        assert failed.error is not None
        assert "exited with code 3" in failed.error
        assert "it went wrong here" in failed.error

    run(scenario, backend)


def test_spawner_api_brings_a_worker_up_and_down(tmp_path: Path, broker: RunningBroker) -> None:
    fixture = make_spawner_fixture(
        tmp_path / "spawner",
        signing_key_path=broker.key_path,
        broker_backend_url=broker.backend_url,
    )
    app = create_app(fixture.settings)
    with (
        serve(app, probe="/healthz") as url,
        httpx.Client(base_url=url, headers=fixture.headers("alice"), timeout=10) as http,
    ):
        created = http.put("/api/v1/workers/default")
        assert created.status_code == 201
        deadline = time.monotonic() + READY_DEADLINE
        status = created.json()
        while status["state"] == "starting":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
            status = http.get("/api/v1/workers/default").json()
        assert status["state"] == "ready", status["error"]
        assert "worker connected to the broker" in [p["message"] for p in status["progress"]]
        assert http.put("/api/v1/workers/default").status_code == 200
        assert http.delete("/api/v1/workers/default").json() == {"deleted": True}
        pid = status["info"]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
