"""Shared fixtures: a real broker on loopback, real worker processes, real client sessions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rexec.auth import AuthSettings, create_static_token, make_validator
from rexec.credentials import create_key_file, make_worker_credential, write_secret_file
from rexec.profile import Profile
from tests.support.workers import WorkerProcess, spawn_worker

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """No test reads or writes the developer's real profile or data directory."""
    home = tmp_path_factory.mktemp("rexec-home")
    monkeypatch.setenv("REXEC_HOME", str(home))
    monkeypatch.setenv("REXEC_QUIET", "1")
    for var in (
        "REXEC_PROFILE",
        "REXEC_SPAWNER_URL",
        "REXEC_TOKEN",
        "REXEC_BROKER_URL",
        "REXEC_BROKER_PUBLIC_KEY",
        "REXEC_WORKER",
        "AUTH_API_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


@dataclass
class BrokerStack:
    """A broker running in a thread, plus helpers to add users and start their workers."""

    directory: Path
    signing_key: bytes
    tokens_file: Path
    frontend: str = ""
    backend: str = ""
    curve_secret: Path | None = None
    curve_public: str | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    broker: object = None
    thread: threading.Thread | None = None

    def start_broker(
        self,
        frontend: str = "tcp://127.0.0.1:0",
        backend: str = "tcp://127.0.0.1:0",
        auth: AuthSettings | None = None,
        queue_depth: int | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        from rexec_broker import Broker, BrokerSettings

        settings = BrokerSettings(
            signing_key_path=self.directory / "signing.key",
            auth=auth or AuthSettings(token_file=self.tokens_file, cache_ttl=60),
            frontend=frontend,
            backend=backend,
            curve_secret_key_path=self.curve_secret,
            **({"queue_depth": queue_depth} if queue_depth else {}),
            **({"max_in_flight": max_in_flight} if max_in_flight else {}),
        )
        broker = Broker(settings, make_validator(settings.auth), self.signing_key)
        self.frontend, self.backend = broker.frontend_url, broker.backend_url
        self.broker = broker
        self.thread = threading.Thread(target=broker.serve_forever, daemon=True)
        self.thread.start()

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()  # type: ignore[attr-defined]
            assert self.thread is not None
            self.thread.join(10)
            self.broker = None

    def add_user(self, user: str, groups: tuple[str, ...] = ()) -> str:
        return create_static_token(self.tokens_file, user, groups)

    def credential(self, user: str, name: str = "default") -> str:
        return make_worker_credential(self.signing_key, user, name)

    def start_worker(
        self, user: str, name: str = "default", credential: str | None = None, wait: bool = True
    ) -> WorkerProcess:
        worker = spawn_worker(
            self.directory,
            len(self.workers),
            self.backend,
            credential or self.credential(user, name),
            self.curve_public,
        )
        self.workers.append(worker)
        if wait:
            worker.wait_registered()
        return worker

    def profile(self, token: str, worker: str = "default") -> Profile:
        return Profile(
            broker_url=self.frontend,
            token=token,
            worker=worker,
            broker_public_key=self.curve_public,
        )

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait(10)
        self.stop_broker()


@pytest.fixture
def broker_stack(tmp_path: Path) -> Iterator[BrokerStack]:
    key = create_key_file(tmp_path / "signing.key")
    write_secret_file(tmp_path / "tokens.json", b'{"tokens": []}')
    stack = BrokerStack(tmp_path, key, tmp_path / "tokens.json")
    stack.start_broker()
    yield stack
    stack.close()


@pytest.fixture
def session_factory() -> Iterator[Callable[..., object]]:
    from rexec.client.session import Session

    sessions: list[Session] = []

    def make(profile: Profile, **kwargs: object) -> Session:
        session = Session(profile, spawn=False, **kwargs)  # type: ignore[arg-type]
        sessions.append(session)
        return session.connect()

    yield make
    for session in sessions:
        session.close()
