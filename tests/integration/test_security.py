"""Security properties that span components: revocation, secrets in logs, encryption end to end."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from rexec.auth import AuthSettings
from rexec.errors import AuthError, ConnectionLost
from rexec.profile import read_profile_file
from tests.conftest import wait_for
from tests.support.idp import IdentityProvider
from tests.support.servers import serve

pytestmark = pytest.mark.integration


def test_revoked_token_ends_the_session_after_the_cache_ttl(broker_stack, session_factory):
    idp = IdentityProvider()
    idp.add("short-lived", "dana")
    with serve(idp.make_app(), probe="/docs") as base:
        broker_stack.stop_broker()
        broker_stack.start_broker(auth=AuthSettings(api_url=f"{base}/introspect", cache_ttl=1.0))
        broker_stack.start_worker("dana")
        session = session_factory(broker_stack.profile("short-lived"))
        assert session.call(lambda: "before") == "before"
        del idp.tokens["short-lived"]  # revoked at the identity provider
        time.sleep(1.5)
        # The next request triggers a background re-validation; the session is then closed.
        deadline = time.monotonic() + 15
        refused = None
        while time.monotonic() < deadline and refused is None:
            try:
                session.call(lambda: "after", timeout=5)
            except (AuthError, ConnectionLost) as exc:
                refused = exc
            time.sleep(0.2)
        assert isinstance(refused, AuthError), refused
        # Background re-validation or the re-greeting that follows, whichever tells first.
        assert "no longer valid" in str(refused) or "refused the token" in str(refused)


def test_tokens_and_credentials_never_reach_the_logs(broker_stack, session_factory, caplog):
    caplog.set_level(logging.DEBUG)
    token = broker_stack.add_user("erin")
    credential = broker_stack.credential("erin")
    worker = broker_stack.start_worker("erin", credential=credential)
    session = session_factory(broker_stack.profile(token))
    assert session.call(lambda: 1) == 1
    with pytest.raises(AuthError):
        session_factory(broker_stack.profile(token + "-wrong"))
    logged = caplog.text + worker.log()
    assert "client connected: user=erin" in caplog.text  # the broker did log the session
    assert token not in logged
    assert credential not in logged
    assert credential.split(".")[2] not in logged


def test_curve_stack_from_the_command_line(isolated_home):
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "rexec",
            "up",
            "--detach",
            "--curve",
            "--broker-port",
            "0",
            "--backend-port",
            "0",
            "--spawner-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    try:
        profile = read_profile_file(isolated_home / "profile.json")
        assert profile is not None and profile.broker_public_key
        secret = (isolated_home / "stack" / "broker.key").stat()
        assert secret.st_mode & 0o777 == 0o600
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from rexec import remote_func\nprint('answer', remote_func(lambda: 6 * 7)())",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "answer 42" in result.stdout
    finally:
        subprocess.run([sys.executable, "-m", "rexec", "down"], timeout=60)


def test_a_revoked_token_also_ends_open_generators(broker_stack, session_factory):
    idp = IdentityProvider()
    idp.add("generator-token", "gina")
    with serve(idp.make_app(), probe="/docs") as base:
        broker_stack.stop_broker()
        broker_stack.start_broker(auth=AuthSettings(api_url=f"{base}/introspect", cache_ttl=1.0))
        broker_stack.start_worker("gina")
        session = session_factory(broker_stack.profile("generator-token"))

        def numbers():
            yield from range(1_000_000)

        items = session.call(numbers)
        assert next(items) == 0
        del idp.tokens["generator-token"]  # revoked at the identity provider
        time.sleep(1.5)
        # Only next() travels now: it alone must trigger the check that ends the session.
        deadline = time.monotonic() + 15
        refused = None
        while time.monotonic() < deadline and refused is None:
            try:
                next(items)
            except (AuthError, ConnectionLost) as exc:
                refused = exc
            time.sleep(0.1)
        assert isinstance(refused, AuthError), refused
        broker = broker_stack.broker
        wait_for(lambda: not broker.table.inflight, 10, "the generator to be cancelled")
