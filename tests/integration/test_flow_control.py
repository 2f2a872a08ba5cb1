"""Bytes, not message counts, bound what waits for a peer: a client that stops reading pauses the
worker feeding it, the broker's memory stays bounded, and deadlines hold under any output."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rexec import protocol as p
from rexec.errors import CallTimeout
from tests.conftest import wait_for
from tests.support.broker_process import hello_seconds, start_broker_process

pytestmark = pytest.mark.integration

# A cell that prints ~10 KB lines as fast as it can, for ``seconds``.
FLOOD_CELL = """
import time
line = "x" * 10_000
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    print(line)
"""


def _start_flood(sock, token: str, seconds: float) -> None:
    sock.send_multipart(p.make_hello(token, "default", {}))
    assert sock.poll(5000) and p.parse_header(sock.recv_multipart()[0])["t"] == p.WELCOME
    cell = FLOOD_CELL.format(seconds=seconds).encode()
    sock.send_multipart(p.make_request("flood-1", p.OP_EXECUTE, [cell]))


def test_a_client_that_stops_reading_cannot_fill_the_broker(tmp_path: Path):
    broker = start_broker_process(tmp_path)
    try:
        mallory, alice = broker.add_user("mallory"), broker.add_user("alice")
        broker.start_worker("mallory")
        broker.start_worker("alice")
        baseline = broker.rss_mib()
        reader = broker.dealer(broker.frontend)
        _start_flood(reader, mallory, seconds=15)  # ... and never read again
        time.sleep(8)  # the worker would print GBs meanwhile
        grown = broker.rss_mib() - baseline
        assert grown < 100, f"the broker grew by {grown:.0f} MiB for one non-reading client"
        assert hello_seconds(broker, alice) < 1.0
        assert broker.alive
    finally:
        broker.stop()


def test_the_worker_of_a_slow_reader_is_paused_and_resumed(broker_stack, session_factory):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    raw = broker_stack.broker.frontend_url
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(raw)
    try:
        _start_flood(sock, token, seconds=4)
        broker = broker_stack.broker
        wait_for(lambda: broker.stats["paused"] >= 1, 15, "the broker to pause the worker")
        # The same user's other session is not held up by the paused request.
        assert session.call(lambda: "still served", timeout=10) == "still served"
        # Now read everything, crediting as a real client does: the flood resumes and ends.
        received = 0
        deadline = time.monotonic() + 60
        done = False
        while not done and time.monotonic() < deadline:
            if not sock.poll(1000):
                continue
            frames = sock.recv_multipart()
            received += sum(map(len, frames))
            sock.send_multipart(p.make_credit(received))
            header = p.parse_header(frames[0])
            done = header["t"] == p.REPLY and header.get("id") == "flood-1"
        assert done and header.get("status") == p.STATUS_OK
        assert received > 20 * 1024 * 1024  # it kept producing after the pause ended
    finally:
        sock.close(0)


def test_a_timeout_holds_while_output_keeps_arriving(session):
    def flood() -> None:
        while True:
            print("y" * 1000)

    start = time.monotonic()
    with pytest.raises(CallTimeout):
        session.call(flood, timeout=2, output=_Discard())
    assert time.monotonic() - start < 8
    assert session.call(lambda: "alive", timeout=10) == "alive"


class _Discard:
    def handle(self, msg_type: str, content: dict) -> None:
        pass


CLIENT = """
import resource, sys, time
from rexec.client.session import Session
from rexec.errors import CallTimeout
from rexec.profile import Profile

class Slow:
    def handle(self, msg_type, content):
        time.sleep(0.002)  # a slow notebook front end

def flood():
    while True:
        print("z" * 100_000)

session = Session(Profile(broker_url=sys.argv[1], token=sys.argv[2]), spawn=False).connect()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
try:
    session.call(flood, timeout=10, output=Slow())
except CallTimeout:
    pass
print(session._channel._received, file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_slow_output_handler_keeps_the_client_small(broker_stack):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLIENT), broker_stack.frontend, token],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    connected_mib, peak_mib = map(int, result.stdout.split()[-2:])
    received = int(result.stderr.split()[-1])
    assert received > 100 * 1024 * 1024  # the worker printed far more than a window ...
    # ... and the client held no more than about its window of it at a time.
    grown = peak_mib - connected_mib
    assert grown < 150, f"the client grew by {grown} MiB after connecting"
