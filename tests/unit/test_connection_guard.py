"""The broker's connection admission rules, without sockets: descriptors and peers are numbers
and tuples here, and shutting a connection down is recorded instead of done."""

from __future__ import annotations

from typing import Any

import pytest

from rexec.errors import ConfigError
from rexec_broker.connections import ConnectionGuard, ConnectionLimits, automatic_id


class Frame:
    """Stands in for a received zmq.Frame: only its source descriptor is read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def get(self, option: int) -> int:
        return self.fd


class Net:
    def __init__(self) -> None:
        self.peers: dict[int, tuple[str, int]] = {}
        self.shut: list[int] = []
        self.now = 1000.0

    def connect(self, fd: int, address: str = "10.0.0.1", port: int | None = None) -> None:
        self.peers[fd] = (address, port or 40000 + fd)

    def guard(self, **limits: Any) -> ConnectionGuard:
        return ConnectionGuard(
            "client",
            ConnectionLimits(**limits),
            shutdown=self._shutdown,
            peer_of=self.peers.get,
            clock=lambda: self.now,
        )

    def _shutdown(self, fd: int, peer: Any) -> bool:
        if self.peers.get(fd) != peer:
            return False
        self.shut.append(fd)
        return True


def rid(n: int) -> bytes:
    return b"\0" + n.to_bytes(4, "big")


def test_automatic_ids_are_a_zero_byte_and_four_more():
    assert automatic_id(rid(7)) and automatic_id(b"\0\xff\xff\xff\xff")
    for chosen in (b"alice", b"\x01abcd", b"\0abc", b"\0abcde", b""):
        assert not automatic_id(chosen)


def test_a_chosen_id_is_shut_down_and_its_address_banned():
    net = Net()
    guard = net.guard(ban_seconds=60)
    net.connect(5, "10.0.0.9")
    guard.accepted(5)
    assert not guard.first_message(b"alice-client", Frame(5))
    assert net.shut == [5] and guard.stats.refused["chosen_id"] == 1
    net.connect(6, "10.0.0.9")
    guard.accepted(6)
    assert net.shut == [5, 6]  # banned
    net.connect(7, "10.0.0.8")
    guard.accepted(7)
    assert guard.first_message(rid(1), Frame(7)) and rid(1) in guard.known
    net.now += 61
    guard.sweep()
    net.connect(8, "10.0.0.9")
    guard.accepted(8)
    assert 8 not in net.shut  # the ban ended


def test_connections_that_do_not_speak_or_authenticate_in_time_are_closed():
    net = Net()
    guard = net.guard(speak_within=3, greet_within=10)
    for fd in (3, 4, 5):
        net.connect(fd)
        guard.accepted(fd)
    guard.first_message(rid(1), Frame(3))
    guard.authenticated(rid(1))
    guard.first_message(rid(2), Frame(4))  # spoke, never authenticated
    net.now += 2
    assert guard.sweep() == 0
    net.now += 2
    assert guard.sweep() == 1 and net.shut == [5]  # silent
    assert guard.stats.refused["silent"] == 1
    net.now += 7
    assert guard.sweep() == 1 and net.shut == [5, 4]  # spoke, but never authenticated
    assert guard.waiting == 0 and rid(2) not in guard.known and rid(1) in guard.known


def test_new_connections_from_all_addresses_share_a_bucket():
    net = Net()
    guard = net.guard(total_rate=1.0, total_burst=3, per_address=100)
    for fd in range(1, 6):
        net.connect(fd, f"10.0.0.{fd}")
        guard.accepted(fd)
    assert net.shut == [4, 5] and guard.stats.refused["total_rate"] == 2


def test_a_revoked_session_must_authenticate_again_in_time():
    net = Net()
    guard = net.guard(speak_within=3, greet_within=10)
    net.connect(3)
    guard.accepted(3)
    guard.first_message(rid(1), Frame(3))
    guard.authenticated(rid(1))
    net.now += 100
    guard.unauthenticated(rid(1))
    assert guard.waiting == 1 and guard.sweep() == 0
    net.now += 11
    assert guard.sweep() == 1 and net.shut == [3]


def test_unauthenticated_connections_are_bounded_per_address_and_in_all():
    net = Net()
    guard = net.guard(per_address=2, total=3)
    for fd in (1, 2, 3):
        net.connect(fd, "10.0.0.1")
        guard.accepted(fd)
    assert net.shut == [3]
    net.connect(4, "10.0.0.2")
    guard.accepted(4)
    net.connect(5, "10.0.0.3")
    guard.accepted(5)
    assert net.shut == [3, 5]  # three wait in all
    guard.first_message(rid(1), Frame(1))
    guard.authenticated(rid(1))  # an authenticated connection no longer counts
    net.connect(6, "10.0.0.3")
    guard.accepted(6)
    assert net.shut == [3, 5] and guard.waiting == 3


def test_new_connections_per_address_follow_a_token_bucket():
    net = Net()
    guard = net.guard(rate=2.0, burst=3, per_address=100)
    for fd in range(1, 6):
        net.connect(fd)
        guard.accepted(fd)
    assert net.shut == [4, 5]
    net.now += 1.0  # two more tokens
    for fd in range(6, 9):
        net.connect(fd)
        guard.accepted(fd)
    assert net.shut == [4, 5, 8]


def test_a_reused_descriptor_is_a_new_connection_and_an_old_peer_is_never_hit():
    net = Net()
    guard = net.guard(greet_within=10)
    net.connect(3, port=1111)
    guard.accepted(3)
    guard.first_message(rid(1), Frame(3))
    guard.authenticated(rid(1))
    # The connection closed and the kernel gave number 3 to another one before the monitor
    # told us: the new peer is tracked afresh, and the old id forgotten.
    net.connect(3, port=2222)
    guard.accepted(3)
    assert rid(1) not in guard.known and guard.waiting == 1
    net.now += 11
    net.connect(3, port=3333)  # and once more, before the sweep: the peer no longer matches
    assert guard.sweep() == 1 and net.shut == []


def test_a_first_message_before_its_accept_report_adopts_the_connection():
    net = Net()
    guard = net.guard()
    net.connect(9)
    assert guard.first_message(rid(4), Frame(9))
    guard.accepted(9)  # reported late: the same connection, not a new one
    guard.authenticated(rid(4))
    assert guard.waiting == 0 and rid(4) in guard.known


def test_bad_limits_are_refused():
    with pytest.raises(ConfigError):
        ConnectionLimits(per_address=0).check()
    with pytest.raises(ConfigError):
        ConnectionLimits(greet_within=0).check()
