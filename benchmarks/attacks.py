"""The broker under each attack of the hardening review: its memory and a legitimate user's
hello, against the same broker idle, measured in one run.

    python -m benchmarks.attacks [--repeat 5]

Each attack runs against a fresh broker process (on ports 0, with a real worker and a real
identity provider that answers in 0.5 s), from the loopback address 127.0.0.2; the legitimate
user connects from 127.0.0.1 with a token that is not cached yet, so its hello pays one identity
provider round trip (the idle row shows what that costs). Reported: the broker's resident
memory before and after, and the slowest of ``--repeat`` fresh hellos made one after the other
while the attack goes on (the first one usually waits behind it the longest). A broker that died
shows as ``dead``.

Targets: alive, hello within 1 s of the idle one, memory within 100 MiB of idle.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from rexec import protocol as p
from tests.support.broker_process import BrokerProcess, silent_tcp, start_broker_process
from tests.support.idp import IdentityProvider
from tests.support.servers import serve

ATTACKER = "127.0.0.2"
IDP_DELAY = 0.5
HELLO_DEADLINE = 40.0
# The first id libzmq's ROUTER assigns when nothing seeded the C library's rand().
UNSEEDED_FIRST_ID = b"\0" + (1804289383).to_bytes(4, "big")


def dealer(url: str, source: str | None = ATTACKER, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(url.replace("tcp://", f"tcp://{source}:0;") if source else url)
    return sock


def hello(broker: BrokerProcess, token: str) -> float | None:
    """Seconds to a welcome for a fresh connection, or None if none came in time."""
    sock = dealer(broker.frontend, source=None)
    started = time.monotonic()
    try:
        sock.send_multipart(p.make_hello(token, "default", {}))
        while sock.poll(int(max(0.0, started + HELLO_DEADLINE - time.monotonic()) * 1000)):
            header = p.parse_header(sock.recv_multipart()[0])
            if header["t"] == p.WELCOME:
                return time.monotonic() - started
            if header["t"] == p.REFUSED:
                return None
        return None
    finally:
        sock.close(0)


# -- the attacks: each starts its damage and returns what must stay open meanwhile -----------


def idle(broker: BrokerProcess) -> list[Any]:
    return []


def idle_connections(broker: BrokerProcess) -> list[Any]:
    """600 TCP connections that never say a word (the broker allowed 256 descriptors)."""
    kept = []
    for _ in range(600):
        try:
            kept.append(silent_tcp(broker.frontend, ATTACKER))
        except OSError:
            break
    return kept


def hello_flood(broker: BrokerProcess) -> list[Any]:
    """20,000 hellos with unknown tokens over 50 connections, the identity provider slow."""
    sockets = [dealer(broker.frontend) for _ in range(50)]
    for round_ in range(400):
        for index, sock in enumerate(sockets):
            sock.send_multipart(p.make_hello(f"bad-{round_}-{index}", "default", {}))
    time.sleep(1.0)  # connected, and their checks queued
    return sockets


def bad_hellos(broker: BrokerProcess) -> list[Any]:
    """120 connections each saying hello with an unknown token."""
    sockets = [dealer(broker.frontend) for _ in range(120)]
    for index, sock in enumerate(sockets):
        sock.send_multipart(p.make_hello(f"bad-token-{index}", "default", {}))
    time.sleep(1.0)  # connected, and their checks queued
    return sockets


def non_reading_client(broker: BrokerProcess) -> list[Any]:
    """An authenticated client whose cell prints 1 MB lines for 40 s; it never reads (its
    own queue holds one message). The memory is read after 30 s of it."""
    sock = dealer(broker.frontend)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.send_multipart(p.make_hello(broker.mallory, "default", {}))
    if sock.poll(int((IDP_DELAY + 5) * 1000)):
        sock.recv_multipart()  # the welcome: reading stops after it
    cell = b"import time\nend = time.time() + 40\nwhile time.time() < end:\n    print('x' * 10**6)"
    sock.send_multipart(p.make_request("flood-1", p.OP_EXECUTE, [cell]))
    time.sleep(30)
    return [sock]


def chosen_id(broker: BrokerProcess) -> list[Any]:
    """Take the id libzmq would give the next connection, then connect one that gets it."""
    chosen = dealer(broker.frontend, routing_id=UNSEEDED_FIRST_ID)
    chosen.send(b"x")
    time.sleep(0.3)
    plain = dealer(broker.frontend)
    plain.send(b"y")
    time.sleep(0.5)
    return [chosen, plain]


def expanding_info(broker: BrokerProcess) -> list[Any]:
    """Register with ~15 KB of 1e15 numbers in ``info``, then say hello as that user with a
    token not cached yet: the welcome, built when the check ends, repeats the info."""
    sock = dealer(broker.backend)
    numbers = '{"x": [' + ",".join(["1e15"] * 3000) + "]}"
    credential = broker.credential("mallory", "default")
    header = f'{{"v":{p.PROTOCOL_VERSION},"t":"register","credential":"{credential}","info":'
    sock.send_multipart([p.NO_TAG, (header + numbers + "}").encode()])
    time.sleep(0.3)
    client = dealer(broker.frontend)
    client.send_multipart(p.make_hello(broker.mallory, "default", {}))
    time.sleep(IDP_DELAY + 0.5)
    return [sock, client]


ATTACKS: list[tuple[str, Callable[[BrokerProcess], list[Any]]]] = [
    ("idle broker (baseline)", idle),
    ("600 idle connections, 256 fds", idle_connections),
    ("20k hellos, unknown tokens", hello_flood),
    ("120 bad hellos, slow IdP", bad_hellos),
    ("client that stops reading", non_reading_client),
    ("chosen routing id collision", chosen_id),
    ("worker info that grows", expanding_info),
]


def measure(
    name: str, attack: Callable[[BrokerProcess], list[Any]], url: str, repeat: int
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="rexec-bench-attack-"))
    broker = start_broker_process(directory, ["--auth-api-url", url], open_files=256)
    try:
        broker.start_worker("mallory")
        broker.mallory = "mallory-token"  # type: ignore[attr-defined]
        before = broker.rss_mib()
        with ExitStack() as stack:
            for thing in attack(broker):
                stack.callback(thing.close)
            times = []
            for index in range(repeat):
                if not broker.alive:
                    break
                times.append(hello(broker, f"alice-{index}"))
            alive = broker.alive
            after = broker.rss_mib() if alive else float("nan")
        waited = [t for t in times if t is not None]
        return {
            "attack": name,
            "alive": alive,
            "rss_before": before,
            "rss_after": after,
            "hello": max(waited) if waited else None,
            "refused": len(times) - len(waited),
        }
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    idp = IdentityProvider()
    idp.add("mallory-token", "mallory")
    for index in range(args.repeat):
        idp.add(f"alice-{index}", "alice")
    rows = []
    with serve(idp.make_app(), probe="/docs") as base:
        idp.delay = IDP_DELAY
        for name, attack in ATTACKS:
            rows.append(measure(name, attack, f"{base}/introspect", args.repeat))
    baseline = rows[0]
    print(
        f"\nBroker under attack (identity provider answers in {IDP_DELAY} s; medians of "
        f"{args.repeat} fresh hellos from another address)"
    )
    print(
        "| attack | broker | RSS before → after (MiB) | growth vs idle (MiB) "
        "| legitimate hello (s) | vs idle |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        grown = row["rss_after"] - row["rss_before"]
        idle_grown = baseline["rss_after"] - baseline["rss_before"]
        hello_text = "none" if row["hello"] is None else f"{row['hello']:.3f}"
        ratio = (
            "-"
            if row["hello"] is None or not baseline["hello"]
            else f"{row['hello'] / baseline['hello']:.2f}"
        )
        if row["refused"]:
            hello_text += f" ({row['refused']} without welcome)"
        print(
            f"| {row['attack']} | {'up' if row['alive'] else 'dead'} "
            f"| {row['rss_before']:.0f} → {row['rss_after']:.0f} | {grown - idle_grown:+.0f} "
            f"| {hello_text} | {ratio} |"
        )


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
