"""The broker's activity query: what idle culling and worker readiness are based on."""

from __future__ import annotations

import threading
import time

import pytest

from rexec.credentials import generate_key, make_service_credential, make_worker_credential
from rexec_spawner.activity import ActivityUnavailable, BrokerActivity

pytestmark = pytest.mark.integration


@pytest.fixture
def activity(broker_stack):
    client = BrokerActivity(broker_stack.frontend, None, broker_stack.signing_key, timeout=5)
    yield client
    client.close()


def test_lists_registered_workers_and_filters_by_user(broker_stack, activity):
    assert activity.query() == []
    broker_stack.start_worker("alice")
    broker_stack.start_worker("bob", "gpu")
    rows = activity.query()
    assert [(row.user, row.worker, row.inflight) for row in rows] == [
        ("alice", "default", 0),
        ("bob", "gpu", 0),
    ]
    assert all(row.idle_seconds < 30 and row.last_activity > time.time() - 60 for row in rows)
    assert [row.user for row in activity.query("bob")] == ["bob"]
    assert activity.query("carol") == []


def test_a_running_call_counts_as_activity_until_it_ends(broker_stack, activity, session_factory):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    time.sleep(0.3)
    (before,) = activity.query("alice")
    assert before.inflight == 0 and before.idle_seconds >= 0.2

    started = threading.Event()
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(session.call(time.sleep, (1.5,))), daemon=True
    )
    thread.start()
    started.wait(0.3)
    deadline = time.monotonic() + 5
    while (busy := activity.query("alice")[0]).inflight == 0:
        assert time.monotonic() < deadline, "the call never showed up as in flight"
        time.sleep(0.05)
    assert busy.busy and busy.idle_seconds == 0.0
    thread.join(10)
    (after,) = activity.query("alice")
    assert after.inflight == 0
    assert after.last_activity > before.last_activity
    assert after.idle_seconds < 1.0


def test_refuses_anything_but_a_service_credential_of_the_shared_key(broker_stack):
    broker_stack.start_worker("alice")
    wrong_key = BrokerActivity(broker_stack.frontend, None, generate_key(), timeout=5)
    with pytest.raises(ActivityUnavailable, match="signature is invalid"):
        wrong_key.query()
    wrong_key.close()

    import zmq

    from rexec import protocol as p
    from rexec.transport import make_dealer

    context = zmq.Context()
    sock = make_dealer(context, None)
    sock.connect(broker_stack.frontend)
    try:
        for credential in (
            make_worker_credential(broker_stack.signing_key, "alice", "default"),
            make_service_credential(broker_stack.signing_key, ttl=1, now=time.time() - 10),
            "",
        ):
            sock.send_multipart(p.make_activity_query("q1", credential))
            assert sock.poll(5000)
            frames = sock.recv_multipart()
            header = p.parse_header(frames[0])
            assert header["t"] == p.ACTIVITY_REPLY and header["status"] == p.STATUS_ERROR
            assert header["error"]["code"] == p.E_AUTH_FAILED
            assert len(frames) == 1  # nothing about any worker leaks
    finally:
        sock.close(linger=0)
        context.term()


def test_no_broker_is_a_clear_error_within_the_timeout():
    client = BrokerActivity("tcp://127.0.0.1:9", None, generate_key(), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ActivityUnavailable, match="did not answer"):
        client.query()
    assert time.monotonic() - started < 2
    client.close()


def test_idle_culler_deletes_only_idle_local_workers(broker_stack, activity, tmp_path):
    import asyncio
    import sys

    from rexec_spawner.backends.local import LocalBackend
    from rexec_spawner.culling import IdleCuller

    backend = LocalBackend(
        data_dir=tmp_path / "spawner",
        signing_key=broker_stack.signing_key,
        broker_backend_url=broker_stack.backend,
        broker_public_key=None,
        worker_command=(sys.executable, "-m", "rexec", "worker"),
        local_users=("idle", "fresh"),
    )
    culler = IdleCuller(backend, activity, idle_timeout=2.0, interval=60)

    async def scenario() -> list[tuple[str, str]]:
        try:
            for user in ("idle", "fresh"):
                await backend.ensure(user, "default")
            deadline = time.monotonic() + 30
            while len(await activity.fetch()) < 2:
                assert time.monotonic() < deadline, "workers never registered"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.1)
            # "fresh" is restarted: a recent registration, no request yet, is not idle.
            await backend.delete("fresh", "default")
            await backend.ensure("fresh", "default")
            while not [row for row in await activity.fetch("fresh") if row.idle_seconds < 1.0]:
                assert time.monotonic() < deadline, "the new worker never registered"
                await asyncio.sleep(0.05)
            culled = await culler.cull_once()
            assert await backend.get("idle", "default") is None
            assert (await backend.get("fresh", "default")) is not None
            return culled
        finally:
            await backend.close()

    assert asyncio.run(scenario()) == [("idle", "default")]
