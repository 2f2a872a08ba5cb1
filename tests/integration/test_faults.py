"""Failures end in clear errors within seconds, never in a hang."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rexec.auth import AuthSettings
from rexec.errors import AuthError, AuthUnavailable, ConnectionLost, WorkerDied
from rexec.transport import create_curve_keypair
from tests.conftest import wait_for
from tests.support.idp import IdentityProvider
from tests.support.servers import free_port, serve

pytestmark = pytest.mark.integration


def test_killed_worker_fails_the_call_within_seconds(broker_stack, session_factory):
    token = broker_stack.add_user("alice")
    worker = broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            session.call(lambda: __import__("time").sleep(60))
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: len(broker_stack.broker.table.inflight) == 1, 10, "the call to start")
    killed_at = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGKILL)
    caller.join(10)
    assert not caller.is_alive(), "the call hung after the worker died"
    assert time.monotonic() - killed_at < 5
    assert isinstance(errors[0], WorkerDied)
    assert "died" in str(errors[0])


def test_broker_restart_is_survived_by_client_and_worker(broker_stack, session_factory):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    assert session.call(lambda: 1) == 1
    frontend, backend = broker_stack.frontend, broker_stack.backend
    broker_stack.stop_broker()
    time.sleep(0.5)
    broker_stack.start_broker(frontend=frontend, backend=backend)
    # The same session object, without reconnecting by hand.
    assert session.call(lambda: 2, timeout=30) == 2


def test_unreachable_identity_provider_is_a_clear_error(broker_stack, session_factory):
    url = f"http://127.0.0.1:{free_port()}/introspect"
    broker_stack.stop_broker()
    broker_stack.start_broker(auth=AuthSettings(api_url=url, timeout=1.0))
    start = time.monotonic()
    with pytest.raises(AuthUnavailable, match="identity provider"):
        session_factory(broker_stack.profile("some-token"))
    assert time.monotonic() - start < 10


def test_no_broker_at_the_address_times_out_with_advice(session_factory):
    from rexec.profile import Profile

    profile = Profile(broker_url=f"tcp://127.0.0.1:{free_port()}", token="t")
    with pytest.raises(ConnectionLost, match="no answer from the broker"):
        session_factory(profile, connect_timeout=1.5)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_broker_validates_tokens_with_a_real_identity_provider(
    broker_stack, session_factory, method
):
    idp = IdentityProvider()
    idp.add("good-token", "carol", groups=["science"])
    with serve(idp.make_app(), probe="/docs") as base:
        broker_stack.stop_broker()
        broker_stack.start_broker(
            auth=AuthSettings(
                api_url=f"{base}/introspect", api_method=method, allowed_groups=("science",)
            )
        )
        broker_stack.start_worker("carol")
        session = session_factory(broker_stack.profile("good-token"))
        assert session.user == "carol"
        assert session.call(lambda: "hi") == "hi"
        with pytest.raises(AuthError, match="refused"):
            session_factory(broker_stack.profile("bad-token"))
        # A second connection with the same token is answered from the cache.
        before = idp.requests
        session_factory(broker_stack.profile("good-token"))
        assert idp.requests == before


def test_curve_encrypted_broker_serves_keyed_peers_only(broker_stack, session_factory):
    public, secret = create_curve_keypair(broker_stack.directory)
    broker_stack.stop_broker()
    broker_stack.curve_secret, broker_stack.curve_public = secret, public
    broker_stack.start_broker()
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    assert session.call(lambda x: x + 1, (1,)) == 2
    plaintext = broker_stack.profile(token).with_overrides()
    from dataclasses import replace

    with pytest.raises(ConnectionLost):
        session_factory(replace(plaintext, broker_public_key=None), connect_timeout=1.5)
