"""A build that hangs (a package index that never answers) ends at the caller's deadline: pip is
killed, nothing is left behind, and the worker keeps its environment and its variables."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rexec.client.environment import apply_requirements
from rexec.client.outputs import CollectingOutput
from rexec.errors import CallTimeout, WorkerDied
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_under(directory: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(directory).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def silent_index() -> Iterator[str]:
    """Accepts connections (the kernel's backlog does) and never answers a request."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"


@pytest.fixture
def hanging_pip(silent_index: str, tmp_path: Path, monkeypatch) -> Path:
    """Workers started now install from an index that never answers; returns their env root."""
    envs = tmp_path / "envs"
    monkeypatch.setenv("REXEC_ENV_ROOT", str(envs))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no site indexes or wheel directories
    monkeypatch.setenv("PIP_INDEX_URL", silent_index)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "60")
    return envs


def test_a_hanging_build_is_cancelled_at_the_deadline(broker_stack, session_factory, hanging_pip):
    envs = hanging_pip
    worker = broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(broker_stack.add_user("alice")))
    session.execute("kept = 'yes'")
    out = CollectingOutput()
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        apply_requirements(session, "six==1.16.0", out, build_timeout=3)
    assert time.monotonic() - started < 10
    assert "pip install six==1.16.0" in out.text()  # it had started
    wait_for(lambda: not list(envs.glob("*.partial-*")), 10, "the partial environment to go")
    wait_for(lambda: not processes_under(envs), 10, "pip to be killed")
    assert not [p for p in envs.iterdir() if not p.name.endswith(".lock")]
    assert worker.proc.poll() is None
    check = CollectingOutput()
    session.execute("print(kept)", output=check)
    assert check.text() == "yes\n" and (session.worker_info or {}).get("env_id") == "base"


def test_a_worker_dying_mid_build_is_an_error_within_the_deadline(
    broker_stack, session_factory, hanging_pip
):
    worker = broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(broker_stack.add_user("alice")))
    out = CollectingOutput()
    killer = threading.Timer(2.0, worker.proc.kill)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(WorkerDied, match="did not come back in environment"):
            apply_requirements(session, "six==1.16.0", out, restart_timeout=3)
    finally:
        killer.cancel()
    assert time.monotonic() - started < 15
