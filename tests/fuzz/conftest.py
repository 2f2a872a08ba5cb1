"""The fuzz tier: real broker and spawner processes attacked with random, malformed and hostile
input for a bounded time, checked all along to stay up, keep serving a legitimate user within a
second and keep their memory bounded.

Every run draws a seed (``REXEC_FUZZ_SEED`` replays one) and prints it on failure; how long each
target is attacked is ``REXEC_FUZZ_SECONDS`` (default 45).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

FUZZ_SECONDS = float(os.environ.get("REXEC_FUZZ_SECONDS", "45"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuzz/" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)
            item.add_marker(pytest.mark.timeout(int(FUZZ_SECONDS * 4 + 120)))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> Iterator[random.Random]:
    seed = int(os.environ.get("REXEC_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    generator = random.Random(seed)
    yield generator
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"\nreplay with REXEC_FUZZ_SEED={seed}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
