"""The broker's connection admission under attack: chosen ids, silent and flooding peers.

Each test attacks a real broker process over loopback; attackers use the source address
127.0.0.2, legitimate users 127.0.0.1 (both loopback on Linux).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from rexec import protocol as p
from tests.support.broker_process import (
    closed_by_peer,
    hello_seconds,
    silent_tcp,
    start_broker_process,
)

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.2"
# The first id an unseeded ROUTER assigns: libzmq draws it with rand() before any srand().
UNSEEDED_FIRST_ID = b"\0" + (1804289383).to_bytes(4, "big")

_PLAIN_ROUTER = """
import sys, zmq
router = zmq.Context().socket(zmq.ROUTER)
print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    router.recv_multipart()
"""


@pytest.fixture
def broker(tmp_path: Path):
    started = []

    def start(*args: str, **kwargs: object):
        process = start_broker_process(tmp_path / f"broker-{len(started)}", args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _collide(url: str) -> None:
    """Take the first automatic id by choice, then connect one peer that gets it assigned."""
    context = zmq.Context.instance()
    chosen = context.socket(zmq.DEALER)
    chosen.setsockopt(zmq.LINGER, 0)
    chosen.setsockopt(zmq.ROUTING_ID, UNSEEDED_FIRST_ID)
    chosen.connect(url)
    chosen.send(b"x")
    time.sleep(0.3)
    plain = context.socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(url)
    plain.send(b"y")
    time.sleep(0.5)
    chosen.close(0)
    plain.close(0)


def test_the_attack_aborts_a_plain_router():
    """The control: on this libzmq, a predicted id taken by choice aborts an unseeded ROUTER."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PLAIN_ROUTER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        _collide(f"tcp://127.0.0.1:{port}")
        assert proc.wait(5) != 0  # aborted
    finally:
        proc.kill()
        proc.wait(5)


def test_a_peer_that_predicts_connection_ids_cannot_abort_the_broker(broker):
    target = broker()
    token = target.add_user("alice")
    for url in (target.frontend, target.backend):
        _collide(url)
        assert target.alive, target.log()
    assert hello_seconds(target, token) < 1.0


def test_a_chosen_id_gets_the_peer_disconnected_and_its_address_refused(broker):
    target = broker()
    token = target.add_user("alice")
    chosen = target.dealer(target.frontend, source=ATTACKER, routing_id=b"alice-client")
    monitor = chosen.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    chosen.send_multipart(p.make_hello(token, "default", {}))
    assert monitor.poll(5000), "the broker kept the connection of a peer that chose its id"
    # The same address is refused for a while, even with a valid token; others are not.
    again = target.dealer(target.frontend, source=ATTACKER)
    again.send_multipart(p.make_hello(token, "default", {}))
    assert not again.poll(1500)
    assert hello_seconds(target, token) < 1.0
    assert "chose its own connection id" in target.log()
    monitor.close(0)


def test_silent_connections_are_closed_once_the_greeting_deadline_passes(broker):
    target = broker("--greet-within", "1")
    token = target.add_user("alice")
    silent = [silent_tcp(url, ATTACKER) for url in (target.frontend, target.backend) * 20]
    time.sleep(0.2)
    assert hello_seconds(target, token) < 1.0
    assert all(closed_by_peer(sock, 5) for sock in silent)
    for sock in silent:
        sock.close()


def test_a_connection_that_says_nothing_goes_sooner_than_one_that_talks(broker):
    target = broker("--speak-within", "1", "--greet-within", "6")
    silent = silent_tcp(target.frontend, ATTACKER)
    talking = target.dealer(target.frontend, source=ATTACKER)
    monitor = talking.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    talking.send_multipart(p.make_ping())  # not a hello: it never authenticates
    assert closed_by_peer(silent, 4)
    assert not monitor.poll(2000)  # the talking one is still there ...
    assert monitor.poll(8000)  # ... until the greeting deadline
    monitor.close(0)
    silent.close()


def test_one_address_cannot_hold_more_than_its_share_of_unauthenticated_connections(broker):
    target = broker(
        "--max-pending-per-address", "8", "--greet-within", "30", "--speak-within", "30"
    )
    token = target.add_user("alice")
    silent = [silent_tcp(target.frontend, ATTACKER) for _ in range(20)]
    closed = sum(closed_by_peer(sock, 1.0) for sock in silent)
    assert closed == 12  # all but 8
    assert hello_seconds(target, token) < 1.0
    for sock in silent:
        sock.close()


def test_new_connections_per_address_are_rate_limited(broker):
    target = broker(
        "--connection-rate",
        "2",
        "--connection-burst",
        "5",
        "--greet-within",
        "30",
        "--speak-within",
        "30",
    )
    token = target.add_user("alice")
    flood = [silent_tcp(target.frontend, ATTACKER) for _ in range(15)]
    closed = sum(closed_by_peer(sock, 1.0) for sock in flood)
    assert closed >= 8  # 5 at once, then about 2 a second
    assert hello_seconds(target, token) < 1.0
    for sock in flood:
        sock.close()


def test_idle_connections_do_not_exhaust_descriptors(broker):
    """300 idle connections against a broker allowed 256 descriptors: new users still get in."""
    target = broker("--greet-within", "2", open_files=256)
    token = target.add_user("alice")
    idle = []
    for _ in range(300):
        try:
            idle.append(silent_tcp(target.frontend, ATTACKER))
        except OSError:
            break  # the kernel's accept queue is full: the attack saturated what it could
    assert hello_seconds(target, token, timeout=10) < 5.0
    time.sleep(2.5)
    assert hello_seconds(target, token) < 1.0
    assert target.alive
    for sock in idle:
        sock.close()


@pytest.fixture
def slow_idp():
    from tests.support.idp import IdentityProvider
    from tests.support.servers import serve

    provider = IdentityProvider()
    provider.add("alice-token", "alice")
    with serve(provider.make_app(), probe="/docs") as base:
        yield provider, f"{base}/introspect"


def test_a_hello_flood_with_a_slow_idp_neither_delays_others_nor_grows_memory(broker, slow_idp):
    provider, url = slow_idp
    provider.delay = 0.5
    target = broker("--auth-api-url", url, "--max-pending-per-address", "500")
    baseline = target.rss_mib()
    connections = [target.dealer(target.frontend, source=ATTACKER) for _ in range(50)]
    for round_ in range(400):  # 20,000 hellos, each with a token nobody knows
        for index, sock in enumerate(connections):
            sock.send_multipart(p.make_hello(f"bad-{round_}-{index}", "default", {}))
    time.sleep(0.5)
    # A real user whose token is not cached yet gets in after about one IdP round trip.
    assert hello_seconds(target, "alice-token") < 1.5
    grown = target.rss_mib() - baseline
    assert grown < 40, f"the broker grew by {grown:.0f} MiB"
    assert provider.requests < 500  # superseded and refused hellos never reached the IdP
    assert target.alive
