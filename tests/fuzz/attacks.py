"""Hostile peers for the broker: each attack is one function of (broker, rng) that does its
damage and returns; the fuzz test picks them at random, in a random order, many times over."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from rexec import protocol as p
from tests.support.broker_process import BrokerProcess, silent_tcp, with_source


def attacker_address(rng: random.Random) -> str:
    """A loopback address other than the legitimate user's 127.0.0.1, a different one most of
    the time: address-level defences (bans, rates) would otherwise stop the attacks early, or hit
    the user too, as they hit anyone behind an attacker's address."""
    if rng.random() < 0.2:
        return "127.0.0.2"
    return f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


Attack = Callable[[BrokerProcess, random.Random], None]

_TYPES = [*p.CLIENT_TO_BROKER, *p.WORKER_TO_BROKER, "welcome", "shutdown", "", "x" * 300]
_FIELDS = ["id", "op", "token", "worker", "credential", "info", "n", "stats", "user", "fn", "ser"]


def _dealer(url: str, rng: random.Random, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(with_source(url, attacker_address(rng)))
    return sock


def _value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased towards the awkward ones."""
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**31, 2**53 + 1, 2**64, -(2**70), 10**400 // 10**390])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e15, float("inf"), float("nan")])
    if kind == 4:
        return "".join(
            rng.choice("aZ0-_./\\\x00\u2603\ud83d\ude00") for _ in range(rng.randrange(80))
        )
    if kind == 5:
        return "y" * rng.choice([0, 1, 64, 65, 1000, 20_000])
    if kind == 6 and depth < 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 7 and depth < 4:
        return {str(_value(rng, 4))[:20]: _value(rng, depth + 1) for _ in range(rng.randrange(6))}
    if kind == 8:
        return [1e15] * rng.randrange(4000)
    return rng.choice(["default", "r1", "call", "execute", "pickle", "rxw1.a.b", "rxs1.a.b"])


def _header(rng: random.Random) -> bytes:
    header: dict[str, Any] = {"v": rng.choice([p.PROTOCOL_VERSION] * 5 + [1, 0, "2", None])}
    header["t"] = rng.choice(_TYPES)
    for name in rng.sample(_FIELDS, rng.randrange(len(_FIELDS))):
        header[name] = _value(rng)
    try:
        text = json.dumps(header, allow_nan=True)
    except (ValueError, OverflowError):
        text = "{}"
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:  # corrupt it
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    return data


def random_frames(broker: BrokerProcess, rng: random.Random) -> None:
    url = rng.choice([broker.frontend, broker.backend])
    sock = _dealer(url, rng)
    for _ in range(rng.randrange(1, 40)):
        frames = [
            bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 100])))
            + b"x" * rng.choice([0, 0, 1000, 70_000])
            for _ in range(rng.randrange(1, 6))
        ]
        if url == broker.backend and rng.random() < 0.5:
            frames.insert(0, rng.choice([b"", bytes(8), b"\x00" * 5]))
        sock.send_multipart(frames)
    time.sleep(0.01)
    sock.close(0)


def malformed_headers(broker: BrokerProcess, rng: random.Random) -> None:
    url = rng.choice([broker.frontend, broker.backend])
    sock = _dealer(url, rng)
    for _ in range(rng.randrange(1, 60)):
        frames = [_header(rng), *([b"payload"] * rng.randrange(3))]
        if url == broker.backend:
            frames.insert(0, rng.choice([p.NO_TAG, bytes(8), b"tag"]))
        sock.send_multipart(frames)
    time.sleep(0.01)
    sock.close(0)


def out_of_order(broker: BrokerProcess, rng: random.Random, token: str) -> None:
    """Valid messages at the wrong time, for unknown requests, with odd numbers."""
    sock = _dealer(broker.frontend, rng)
    if rng.random() < 0.5:
        sock.send_multipart(p.make_hello(token, "default", {}))
    for _ in range(rng.randrange(1, 30)):
        choice = rng.randrange(6)
        rid = f"f-{rng.randrange(10**6)}"
        if choice == 0:
            sock.send_multipart(p.make_next(rid))
        elif choice == 1:
            sock.send_multipart(p.make_cancel(rid))
        elif choice == 2:
            sock.send_multipart(p.make_credit(rng.choice([-5, 0, 2**62, rng.randrange(10**9)])))
        elif choice == 3:
            sock.send_multipart(p.make_request(rid, p.OP_EXECUTE, [b"1 + 1"]))
        elif choice == 4:
            sock.send_multipart(p.make_activity_query(rid, rng.choice(["", "rxs1.x.y"])))
        else:
            sock.send_multipart(p.make_revoke(rid, "rxs1.a.b", "alice", "default", "i", None))
    time.sleep(0.02)
    sock.close(0)


def chosen_ids(broker: BrokerProcess, rng: random.Random, token: str) -> None:
    url = rng.choice([broker.frontend, broker.backend])
    routing_id = rng.choice(
        [
            b"\0" + rng.randbytes(4),  # looks automatic
            rng.randbytes(rng.randrange(1, 30)),
            b"\x01" + rng.randbytes(4),
        ]
    )
    if not routing_id or routing_id == b"\0":
        routing_id = b"chosen"
    sock = _dealer(url, rng, routing_id)
    if rng.random() < 0.7:
        sock.send_multipart(p.make_hello(token, "default", {}))
    time.sleep(0.05)
    sock.close(0)


def hello_flood(broker: BrokerProcess, rng: random.Random) -> None:
    sockets = [_dealer(broker.frontend, rng) for _ in range(rng.randrange(1, 20))]
    for _ in range(rng.randrange(50, 400)):
        token = "t" * rng.choice([1, 40, 9000]) + str(rng.randrange(10**9))
        rng.choice(sockets).send_multipart(p.make_hello(token, "default", {}))
    time.sleep(0.05)
    for sock in sockets:
        sock.close(0)


def connection_churn(broker: BrokerProcess, rng: random.Random) -> None:
    """Connections that open and close, or stay and say nothing."""
    url = rng.choice([broker.frontend, broker.backend])
    silent: list[socket.socket] = []
    for _ in range(rng.randrange(5, 60)):
        try:
            silent.append(silent_tcp(url, attacker_address(rng)))
        except OSError:
            break
    if rng.random() < 0.5:
        for sock in silent:
            try:
                sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
            except OSError:
                pass
    time.sleep(rng.choice([0.0, 0.05, 0.3]))
    for sock in silent:
        sock.close()


def bad_registrations(broker: BrokerProcess, rng: random.Random) -> None:
    sock = _dealer(broker.backend, rng)
    for _ in range(rng.randrange(1, 15)):
        choice = rng.randrange(4)
        if choice == 0:
            credential = "rxw1." + "A" * rng.randrange(5000) + ".x"
        elif choice == 1:
            credential = broker.credential(
                "mallory", f"m{rng.randrange(5)}", ttl=rng.choice([-5, 60])
            )
        elif choice == 2:
            credential = broker.credential("mallory", "default")[:-3] + "abc"
        else:
            credential = broker.credential("mallory", "fuzzed")
        info = _value(rng) if rng.random() < 0.7 else {"pid": 1}
        try:
            header = p.make_header(p.REGISTER, credential=credential, info=info)
        except (p.ProtocolError, TypeError, ValueError):
            header = _header(rng)
        sock.send_multipart([p.NO_TAG, header])
    time.sleep(0.02)
    sock.close(0)


def non_reading_client(broker: BrokerProcess, rng: random.Random, token: str) -> None:
    """An authenticated client that starts output it never reads, then disappears."""
    sock = _dealer(broker.frontend, rng)
    sock.send_multipart(p.make_hello(token, "default", {}))
    cell = f"for _ in range({rng.randrange(1000, 200_000)}): print('z' * 10_000)"
    sock.send_multipart(p.make_request(f"nr-{rng.randrange(10**6)}", p.OP_EXECUTE, [cell.encode()]))
    time.sleep(rng.choice([0.2, 1.0]))
    sock.close(0)
