"""What one peer sends never ends the broker's loop: oversized or odd fields from an
authenticated worker or client are refused with a reason, and everyone else carries on."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from rexec import protocol as p
from tests.support.broker_process import hello_seconds, start_broker_process
from tests.support.idp import IdentityProvider
from tests.support.servers import serve

pytestmark = pytest.mark.integration


def _register(broker, credential: str, info_json: str) -> dict:
    """Register over a raw DEALER with ``info`` written as JSON text (as an attacker would)."""
    sock = broker.dealer(broker.backend)
    header = f'{{"v":{p.PROTOCOL_VERSION},"t":"register","credential":"{credential}","info":'
    sock.send_multipart([p.NO_TAG, (header + info_json + "}").encode()])
    assert sock.poll(5000), "no answer to a register"
    return p.parse_header(sock.recv_multipart()[1])


def test_an_info_that_grows_when_encoded_again_is_refused_and_the_broker_lives(tmp_path):
    """~15 KB of 1e15 numbers fits a header; encoded again it would not fit the welcome."""
    idp = IdentityProvider()
    idp.add("slow-token", "mallory")
    with serve(idp.make_app(), probe="/docs") as base:
        broker = start_broker_process(tmp_path, ["--auth-api-url", f"{base}/introspect"])
        try:
            numbers = '{"x": [' + ",".join(["1e15"] * 3000) + "]}"
            assert 14_000 < len(numbers) < p.MAX_HEADER_BYTES - 300
            assert len(json.dumps(json.loads(numbers))) > p.MAX_HEADER_BYTES
            answer = _register(broker, broker.credential("mallory"), numbers)
            assert answer["t"] == p.REFUSED and "plain values" in answer["error"]["message"]
            # The token is not cached: its check runs on the pool and its welcome is built
            # when it ends, the path that used to end the loop.
            assert hello_seconds(broker, "slow-token") < 5.0
            assert broker.alive
            assert _register(broker, broker.credential("mallory"), '{"pid": 1}')["t"] == (
                p.REGISTERED
            )
        finally:
            broker.stop()


def test_odd_ping_stats_are_ignored(broker_stack, session_factory):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    raw = broker_stack.broker.backend_url
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(raw)
    sock.send_multipart([p.NO_TAG, *p.make_register(broker_stack.credential("bob"), {})])
    assert sock.poll(5000) and p.parse_header(sock.recv_multipart()[1])["t"] == p.REGISTERED
    sock.send_multipart([p.NO_TAG, *p.make_ping({"deep": {"er": [1] * 10}})])
    assert sock.poll(5000)
    assert broker_stack.broker.stats["bad_worker_stats"] == 1
    assert session.call(lambda: 3) == 3
    sock.close(0)
    time.sleep(0.1)
