"""A worker's credential lives only as long as the worker: renewed while it runs, revoked when
it is deleted, never able to displace a newer one; and a hung worker is replaced, not waited for.
Real broker, real worker processes, the real local backend and spawner."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rexec.credentials import make_worker_credential
from rexec.profile import load_profile
from rexec_spawner.activity import BrokerActivity
from rexec_spawner.backends.local import LocalBackend
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")


def make_backend(tmp_path: Path, stack: Any, **options: Any) -> LocalBackend:
    return LocalBackend(
        data_dir=tmp_path / "spawner",
        signing_key=stack.signing_key,
        broker_backend_url=stack.backend,
        broker_public_key=None,
        worker_command=(sys.executable, "-m", "rexec", "worker"),
        local_users=("alice",),
        broker=BrokerActivity(stack.frontend, None, stack.signing_key),
        **options,
    )


def run(backend: LocalBackend, scenario: Callable[[LocalBackend], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


async def until_ready(backend: LocalBackend, name: str = "default") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = await backend.get("alice", name)
        if record is not None and record.state == "ready":
            return
        assert record is None or record.state != "failed", record
        await asyncio.sleep(0.1)
    raise AssertionError("the worker did not become ready")


def registered(stack: Any, user: str = "alice") -> list[str]:
    return sorted(w.instance for w in stack.broker.table.workers.values() if w.user == user)


def test_a_deleted_workers_credential_no_longer_registers(tmp_path, broker_stack):
    backend = make_backend(tmp_path, broker_stack)

    async def scenario(backend: LocalBackend) -> str:
        await backend.ensure("alice", "default")
        await until_ready(backend)
        saved = backend.worker_dir("alice", "default").joinpath("credential").read_text()
        await backend.delete("alice", "default")
        return saved

    saved = run(backend, scenario)
    wait_for(lambda: not registered(broker_stack), 10, "the deleted worker to be gone")
    copy = broker_stack.start_worker("alice", credential=saved, wait=False)
    assert copy.proc.wait(20) == 3  # refused
    assert "revoked" in copy.log()
    assert not registered(broker_stack)


def test_a_running_worker_gets_its_credential_renewed_in_time(tmp_path, broker_stack):
    backend = make_backend(tmp_path, broker_stack, credential_ttl=12.0)

    async def scenario(backend: LocalBackend) -> None:
        await backend.ensure("alice", "default")
        await until_ready(backend)
        path = backend.worker_dir("alice", "default") / "credential"
        first = path.read_text()
        instance = registered(broker_stack)
        await asyncio.sleep(16)  # past the first credential's expiry
        assert path.read_text() != first  # renewed, same worker
        assert registered(broker_stack) == instance
        conn = next(iter(broker_stack.broker.table.workers.values()))
        assert conn.expires_at is not None and conn.expires_at > time.time() + 5

    run(backend, scenario)


def test_an_expired_credential_that_nobody_renews_ends_the_worker(broker_stack):
    credential = make_worker_credential(broker_stack.signing_key, "alice", "default", ttl=4)
    worker = broker_stack.start_worker("alice", credential=credential)
    assert registered(broker_stack)
    assert worker.proc.wait(20) == 3  # dropped and refused: its credential expired
    assert "expired" in worker.log()
    assert not registered(broker_stack)


def test_an_older_credential_cannot_take_a_newer_workers_name(broker_stack, session_factory):
    token = broker_stack.add_user("alice")
    key = broker_stack.signing_key
    newer = make_worker_credential(key, "alice", "default", instance="newer")
    older = make_worker_credential(key, "alice", "default", now=time.time() - 60, instance="old")
    broker_stack.start_worker("alice", credential=newer)
    stale = broker_stack.start_worker("alice", credential=older, wait=False)
    assert stale.proc.wait(20) == 0  # told a newer worker holds the name
    assert registered(broker_stack) == ["newer"]
    session = session_factory(broker_stack.profile(token))
    assert session.call(os.getpid) == broker_stack.workers[0].proc.pid


def test_a_hung_worker_is_replaced_and_the_next_call_gets_a_new_one(isolated_home):
    env = {**os.environ, "REXEC_WORKER_HUNG_AFTER": "3"}
    up = [sys.executable, "-m", "rexec", "up", "--detach"]
    ports = ["--broker-port", "0", "--backend-port", "0", "--spawner-port", "0"]
    started = subprocess.run([*up, *ports], capture_output=True, text=True, timeout=60, env=env)
    assert started.returncode == 0, started.stderr
    old_pid = None
    try:
        from rexec.client.session import Session

        with Session(load_profile(), progress=lambda message: None) as session:
            old_pid = session.call(os.getpid, timeout=30)
            os.kill(old_pid, signal.SIGSTOP)  # hung: alive, but nothing runs
            start = time.monotonic()
            new_pid = None
            while new_pid is None and time.monotonic() - start < 40:
                try:
                    new_pid = session.call(os.getpid, timeout=30)
                except Exception:  # the call in flight when it hung, or a retry
                    continue
            took = time.monotonic() - start
            assert new_pid is not None and new_pid != old_pid
            assert took < 25, f"a new worker took {took:.1f} s"
    finally:
        if old_pid is not None:
            try:
                os.kill(old_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run([sys.executable, "-m", "rexec", "down"], timeout=60, env=env)
