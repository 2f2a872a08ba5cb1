"""The benchmark's reference relays carry what the benchmark measures, so its numbers mean
something: a broken relay would report a floor that never did the work."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import minimal
from benchmarks.core import minimal_stack, raw_stack

pytestmark = pytest.mark.integration


def test_minimal_relay_runs_functions_and_returns_their_results():
    array = np.arange(200_000, dtype=np.int64)  # large enough to travel out of band
    with minimal_stack() as relay:
        assert relay.call(minimal.echo, ({"a": [1, 2]},)) == {"a": [1, 2]}
        assert relay.call(minimal.noop) is None
        assert np.array_equal(relay.call(minimal.echo, (array,)), array)
        relay.pipelined(minimal.noop, 300)
        assert relay.call(minimal.echo, ("still in step",)) == "still in step"


def test_raw_relay_echoes_every_frame():
    with raw_stack() as sock:
        sock.send_multipart([b"header", b"payload"])
        assert sock.recv_multipart() == [b"header", b"payload"]
