"""Token checks against a real, slow identity provider: shared, bounded and fair."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import wait

import pytest

from rexec.auth import CachingValidator, IntrospectionValidator
from rexec.errors import AuthError
from rexec.token_checks import ChecksBusy, TokenChecks
from tests.support.idp import IdentityProvider
from tests.support.servers import serve

pytestmark = pytest.mark.integration


@pytest.fixture
def idp() -> Iterator[tuple[IdentityProvider, str]]:
    provider = IdentityProvider()
    provider.add("good-token", "alice")
    with serve(provider.make_app(), probe="/docs") as base:
        yield provider, f"{base}/introspect"


def _checks(url: str, **kwargs: int) -> TokenChecks:
    return TokenChecks(CachingValidator(IntrospectionValidator(url, timeout=10)), **kwargs)


def test_concurrent_checks_of_one_token_ask_the_provider_once(idp):
    provider, url = idp
    provider.delay = 0.5
    checks = _checks(url, threads=4)
    try:
        before = provider.requests
        futures = [checks.submit("good-token", f"10.0.0.{i}") for i in range(50)]
        done, _ = wait(futures, timeout=10)
        assert len(done) == 50 and {f.result().user for f in done} == {"alice"}
        assert provider.requests - before == 1
        # Cached now: answered without a thread or a call.
        assert checks.submit("good-token", "10.0.0.1").result(timeout=0).user == "alice"
    finally:
        checks.close()


def test_a_refusal_is_remembered_briefly(idp):
    provider, url = idp
    checks = _checks(url, threads=2)
    try:
        with pytest.raises(AuthError):
            checks.submit("bad-token", "a").result(timeout=10)
        before = provider.requests
        future = checks.submit("bad-token", "a")
        assert future.done()  # from the cache, at once
        with pytest.raises(AuthError):
            future.result()
        assert provider.requests == before
    finally:
        checks.close()


def test_one_source_cannot_queue_without_bound(idp):
    provider, url = idp
    provider.delay = 1.0
    checks = _checks(url, threads=2, per_source=5, max_waiting=8)
    try:
        accepted, busy = 0, 0
        for index in range(100):
            try:
                checks.submit(f"bad-{index}", "attacker")
                accepted += 1
            except ChecksBusy:
                busy += 1
        # 5 waiting plus at most one running per thread that the source may use.
        assert accepted <= 5 + 1 + 1 and busy >= 93
        assert checks.waiting <= 5
        with pytest.raises(ChecksBusy):
            for index in range(10):
                checks.submit(f"other-{index}", f"10.1.0.{index}")
    finally:
        checks.close()


def test_another_source_waits_one_round_trip_at_most_whatever_the_first_queued(idp):
    provider, url = idp
    provider.delay = 0.5
    checks = _checks(url, threads=4, per_source=200, max_waiting=400)
    try:
        flood = [checks.submit(f"bad-{index}", "attacker") for index in range(120)]
        time.sleep(0.1)
        started = time.monotonic()
        assert checks.submit("good-token", "10.0.0.7").result(timeout=10).user == "alice"
        assert time.monotonic() - started < 1.2  # one provider round trip, plus slack
        for future in flood:
            future.cancel()
        time.sleep(0.6)
        # Cancelled checks that had not started never reach the provider.
        assert provider.requests < 20
    finally:
        checks.close()
