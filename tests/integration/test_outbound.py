"""The broker's outbox over real (inproc) sockets: windows, held bytes, pause and overflow."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import pytest
import zmq

from rexec_broker.outbound import FlowLimits, Outbound

pytestmark = pytest.mark.integration
KiB = 1024

LIMITS = FlowLimits(
    window=64 * KiB,
    total_window=96 * KiB,
    pause_at=40 * KiB,
    resume_at=10 * KiB,
    overflow_at=200 * KiB,
    max_held=300 * KiB,
)


class Pair:
    """A ROUTER with DEALER peers, and what the outbox told its owner."""

    def __init__(self, context: zmq.Context, limits: FlowLimits = LIMITS) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind("inproc://outbound-test")
        self.context = context
        self.events: list[tuple[bytes, str]] = []
        self.gone: list[bytes] = []
        self.outbox = Outbound(
            self.router,
            self.router,
            lambda key, reason: self.gone.append(key[1]),
            collections.Counter(),
            limits,
            lambda key, level: self.events.append((key[1], level)),
        )
        self.peers: list[zmq.Socket] = []

    def peer(self) -> tuple[zmq.Socket, bytes]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect("inproc://outbound-test")
        sock.send(b"hi")
        rid, _ = self.router.recv_multipart()
        self.peers.append(sock)
        return sock, rid

    def send(self, rid: bytes, size: int) -> None:
        self.outbox.send(True, rid, [rid, b"h", b"x" * (size - 1)])

    def close(self) -> None:
        for sock in self.peers:
            sock.close(0)
        self.router.close(0)


@pytest.fixture
def pair() -> Iterator[Pair]:
    context = zmq.Context()
    made = Pair(context)
    yield made
    made.close()
    context.term()


def received(sock: zmq.Socket) -> int:
    total = 0
    while sock.poll(50):
        total += sum(map(len, sock.recv_multipart()))
    return total


def test_a_peer_gets_a_window_beyond_what_it_read(pair):
    sock, rid = pair.peer()
    for _ in range(10):
        pair.send(rid, 10 * KiB)
    assert received(sock) == 60 * KiB  # a 7th would pass the 64 KiB window
    assert pair.outbox.held_for((True, rid)) == 40 * KiB
    pair.outbox.credit((True, rid), 60 * KiB)
    pair.outbox.flush()
    assert received(sock) == 40 * KiB and pair.outbox.held_for((True, rid)) == 0


def test_one_message_always_goes_when_nothing_is_outstanding(pair):
    sock, rid = pair.peer()
    pair.send(rid, 150 * KiB)  # bigger than the window
    assert received(sock) == 150 * KiB
    pair.send(rid, 1 * KiB)
    assert received(sock) == 0  # outstanding: waits for credit
    pair.outbox.credit((True, rid), 150 * KiB)
    pair.outbox.flush()
    assert received(sock) == 1 * KiB


def test_held_bytes_pause_then_resume_once_the_peer_reads(pair):
    sock, rid = pair.peer()
    for _ in range(12):
        pair.send(rid, 10 * KiB)
    assert pair.events == [(rid, "pause")]  # 60 KiB sent, 60 KiB held > pause_at
    pair.outbox.credit((True, rid), received(sock))
    pair.outbox.flush()
    assert pair.events == [(rid, "pause"), (rid, "resume")]
    assert received(sock) == 60 * KiB


def test_the_peer_holding_most_overflows_and_its_held_messages_can_be_dropped(pair):
    _, a = pair.peer()
    _, b = pair.peer()
    for _ in range(10):
        pair.send(b, 10 * KiB)  # 60 KiB sent, 40 KiB held
    for _ in range(30):
        pair.send(a, 10 * KiB)  # 30 KiB sent (the total window is full), the rest held
    assert (a, "overflow") in pair.events and (b, "overflow") not in pair.events
    dropped = pair.outbox.drop((True, a))
    assert dropped and pair.outbox.held_for((True, a)) == 0
    assert pair.outbox.held_bytes == pair.outbox.held_for((True, b))


def test_all_peers_share_a_total_window(pair):
    sa, a = pair.peer()
    sb, b = pair.peer()
    for _ in range(6):
        pair.send(a, 10 * KiB)
    for _ in range(6):
        pair.send(b, 10 * KiB)
    # a took 60 KiB; b what fits in the total of 96 KiB.
    assert received(sa) == 60 * KiB and received(sb) == 30 * KiB
    pair.outbox.credit((True, a), 60 * KiB)  # room in the total lets b go on
    pair.outbox.flush()
    assert received(sb) == 30 * KiB


def test_a_gone_peer_is_forgotten(pair):
    sock, rid = pair.peer()
    sock.close(0)
    pair.peers.remove(sock)
    deadline = time.monotonic() + 5
    while not pair.gone and time.monotonic() < deadline:
        pair.send(rid, 1 * KiB)
        pair.outbox.credit((True, rid), 10**9)
        time.sleep(0.01)
    assert pair.gone == [rid] and pair.outbox.in_flight == 0


def test_a_single_large_message_waits_without_overflowing(pair):
    _sock, rid = pair.peer()
    pair.send(rid, 150 * KiB)  # sent: nothing was outstanding
    pair.send(rid, 250 * KiB)  # over every bound, but alone: the one being read next
    assert (rid, "overflow") not in pair.events and not pair.outbox.crowded((True, rid))
    pair.send(rid, 10 * KiB)
    assert (rid, "overflow") in pair.events and pair.outbox.crowded((True, rid))


def test_a_peer_that_reads_nothing_is_stalled(pair):
    sock, rid = pair.peer()
    for _ in range(8):
        pair.send(rid, 10 * KiB)
    assert pair.outbox.stalled() == []
    pair.outbox.limits = FlowLimits(**{**LIMITS.__dict__, "stall_after": 0.2})
    time.sleep(0.3)
    assert pair.outbox.stalled() == [(True, rid)]
    pair.outbox.credit((True, rid), received(sock))
    assert pair.outbox.stalled() == []


def test_less_than_a_quarter_window_outstanding_never_blocks_a_large_message(pair):
    """Peers report every quarter window: what stays below it may never be reported, and a
    message waiting for that report would wait forever."""
    sock, rid = pair.peer()
    pair.send(rid, 1 * KiB)  # a welcome, say: never reported on its own
    pair.send(rid, 150 * KiB)
    assert received(sock) == 151 * KiB
