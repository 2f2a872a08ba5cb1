"""Tenant isolation at the broker: identities come from tokens and credentials, never the wire."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest
import zmq

from rexec import protocol as p
from rexec.credentials import make_worker_credential
from rexec.errors import WorkerUnavailable
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _raw_dealer(url: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(url)
    return sock


def _recv_header(sock: zmq.Socket, timeout_ms: int = 3000, tagged: bool = False) -> dict | None:
    if not sock.poll(timeout_ms):
        return None
    frames = sock.recv_multipart()
    return p.parse_header(frames[1] if tagged else frames[0])


def test_each_user_reaches_only_their_own_worker(broker_stack, session_factory):
    alice, bob = broker_stack.add_user("alice"), broker_stack.add_user("bob")
    alice_worker = broker_stack.start_worker("alice")
    bob_worker = broker_stack.start_worker("bob")
    broker_stack.start_worker("bob", name="bonly")
    a = session_factory(broker_stack.profile(alice))
    b = session_factory(broker_stack.profile(bob))
    assert a.call(os.getpid) == alice_worker.proc.pid
    assert b.call(os.getpid) == bob_worker.proc.pid
    a.call(lambda: globals().__setitem__("secret", "alice's"))
    assert b.call(lambda: globals().get("secret")) is None
    # Naming a worker only bob has does not reach it: names are per user.
    stranger = session_factory(broker_stack.profile(alice, worker="bonly"))
    with pytest.raises(WorkerUnavailable):
        stranger.call(os.getpid, timeout=30)


def test_worker_with_forged_or_foreign_credential_is_refused(broker_stack):
    broker_stack.add_user("alice")
    other_key = make_worker_credential(os.urandom(32), "alice", "default")
    forged = broker_stack.start_worker("alice", credential=other_key, wait=False)
    assert forged.proc.wait(20) == 3
    assert "signature is invalid" in forged.log()
    # Re-signing nothing but swapping the user in a valid credential breaks the signature too.
    genuine = broker_stack.credential("bob")
    prefix, body, signature = genuine.split(".")
    import base64
    import json

    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["u"] = "alice"
    swapped = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = broker_stack.start_worker(
        "x", credential=f"{prefix}.{swapped}.{signature}", wait=False
    )
    assert tampered.proc.wait(20) == 3
    assert broker_stack.broker.table.workers == {}


def test_requests_without_hello_and_chosen_identities_go_nowhere(broker_stack):
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    anonymous = _raw_dealer(broker_stack.frontend)
    anonymous.send_multipart(p.make_request("r1", p.OP_EXECUTE, [b"print(1)"]))
    reply = _recv_header(anonymous)
    assert reply is not None and reply["error"]["code"] == p.E_UNAUTHENTICATED
    # A peer that picks its own ROUTING_ID is ignored (and disconnected) even with a valid token.
    chosen = _raw_dealer(broker_stack.frontend, routing_id=b"alice-client")
    chosen.send_multipart(p.make_hello(token, "default", {}))
    assert _recv_header(chosen, 1000) is None
    assert broker_stack.broker.front_guard.stats.refused["chosen_id"] >= 1
    anonymous.close()
    chosen.close()


def test_worker_cannot_answer_for_another_users_request(broker_stack, session_factory):
    bob = broker_stack.add_user("bob")
    broker_stack.start_worker("bob")
    b = session_factory(broker_stack.profile(bob))
    # Mallory runs a genuine worker of her own and knows bob's connection and request ids.
    mallory = _raw_dealer(broker_stack.backend)
    mallory.send_multipart([p.NO_TAG, *p.make_register(broker_stack.credential("mallory"), {})])
    assert _recv_header(mallory, tagged=True)["t"] == p.REGISTERED
    result: dict[str, object] = {}

    def slow_call() -> None:
        result["value"] = b.call(lambda: (__import__("time").sleep(1.5), "from bob's worker")[1])

    caller = threading.Thread(target=slow_call)
    caller.start()
    broker = broker_stack.broker
    wait_for(lambda: len(broker.table.inflight) == 1, 10, "bob's request to be in flight")
    (client_rid, request_id), _ = next(iter(broker.table.inflight.items()))
    forged_value = pickle.dumps("forged by mallory")
    mallory.send_multipart(
        [client_rid, *p.make_reply(request_id, p.STATUS_OK, [forged_value], ser="pickle")]
    )
    caller.join(20)
    assert result["value"] == "from bob's worker"
    assert broker.stats["dropped_unrouted"] >= 1
    mallory.close()


def test_broker_never_unpickles_payloads(broker_stack, tmp_path):
    token = broker_stack.add_user("alice")  # alice has no worker: the broker handles it alone
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    client = _raw_dealer(broker_stack.frontend)
    client.send_multipart(p.make_hello(token, "default", {}))
    assert _recv_header(client)["t"] == p.WELCOME
    payload = pickle.dumps(Exploit())
    client.send_multipart(p.make_request("r1", p.OP_CALL, [payload, payload], fn="x", ser="pickle"))
    reply = _recv_header(client)
    assert reply["error"]["code"] == p.E_NO_WORKER
    # A pickle where the header belongs is refused as malformed, not loaded.
    client.send_multipart([payload])
    refused = _recv_header(client)
    assert refused["t"] == p.REFUSED and refused["error"]["code"] == p.E_BAD_MESSAGE
    time.sleep(0.2)
    assert not marker.exists()
    client.close()


def test_oversized_message_is_refused_with_a_clear_error(broker_stack):
    from rexec.auth import AuthSettings, make_validator
    from rexec_broker import Broker, BrokerSettings

    token = broker_stack.add_user("alice")
    settings = BrokerSettings(
        signing_key_path=broker_stack.directory / "signing.key",
        auth=AuthSettings(token_file=broker_stack.tokens_file),
        frontend="tcp://127.0.0.1:0",
        backend="tcp://127.0.0.1:0",
        max_message_bytes=64 * 1024,
    )
    small = Broker(settings, make_validator(settings.auth), broker_stack.signing_key)
    thread = threading.Thread(target=small.serve_forever, daemon=True)
    thread.start()
    client = _raw_dealer(small.frontend_url)
    try:
        client.send_multipart(p.make_hello(token, "default", {}))
        welcome = _recv_header(client)
        assert welcome["max_bytes"] == 64 * 1024
        client.send_multipart(p.make_request("big", p.OP_EXECUTE, [b"x" * 50_000, b"y" * 50_000]))
        reply = _recv_header(client)
        assert reply["error"]["code"] == p.E_TOO_LARGE
        assert "exceeds the broker's limit" in reply["error"]["message"]
    finally:
        client.close()
        small.stop()
        thread.join(10)
