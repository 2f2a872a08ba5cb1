"""The broker's routing rules, without sockets."""

from __future__ import annotations

from rexec import protocol as p
from rexec_broker.routing import ClientConn, Refusal, RoutingTable, WorkerConn


def client(rid: bytes, user: str, worker: str = "default") -> ClientConn:
    return ClientConn(rid, user, (), worker, "token", 0.0)


def test_request_goes_to_the_users_own_worker_and_reply_to_the_asker():
    table = RoutingTable()
    table.register_worker(WorkerConn(b"\0wA", "alice", "default", {}))
    table.register_worker(WorkerConn(b"\0wB", "bob", "default", {}))
    table.add_client(client(b"\0cA", "alice"))
    table.add_client(client(b"\0cB", "bob"))
    assert table.start_request(b"\0cA", "r1").rid == b"\0wA"
    assert table.start_request(b"\0cB", "r1").rid == b"\0wB"
    tag = table.clients[b"\0cA"].tag
    # Workers see route tags, not connection ids; bob's worker cannot answer alice's request.
    assert tag != b"\0cA" and len(tag) == 8
    assert table.route_response(b"\0wB", tag, "r1") is None
    assert table.route_response(b"\0wA", b"\0cA", "r1") is None
    assert table.route_response(b"\0wA", tag, "r1") == b"\0cA"
    table.finish_request((b"\0cA", "r1"))  # after its terminal reply
    assert table.route_response(b"\0wA", tag, "r1") is None
    assert table.clients[b"\0cA"].inflight == set() and table.inflight == {(b"\0cB", "r1"): b"\0wB"}
    assert table.workers[b"\0wA"].inflight == set()


def test_unauthenticated_duplicate_and_workerless_requests_are_refused():
    table = RoutingTable()
    assert table.start_request(b"\0c", "r").code == p.E_UNAUTHENTICATED
    table.add_client(client(b"\0c", "alice"))
    refusal = table.start_request(b"\0c", "r")
    assert isinstance(refusal, Refusal) and refusal.code == p.E_NO_WORKER
    table.register_worker(WorkerConn(b"\0w", "alice", "default", {}))
    table.start_request(b"\0c", "r")
    assert table.start_request(b"\0c", "r").code == p.E_BAD_MESSAGE


def test_followups_only_for_the_clients_own_requests():
    table = RoutingTable()
    table.register_worker(WorkerConn(b"\0w", "alice", "default", {}))
    table.add_client(client(b"\0c1", "alice"))
    table.add_client(client(b"\0c2", "alice"))
    table.start_request(b"\0c1", "r")
    assert table.followup_target(b"\0c1", "r") == b"\0w"
    assert table.followup_target(b"\0c2", "r") is None


def test_removing_a_worker_reports_its_lost_requests():
    table = RoutingTable()
    table.register_worker(WorkerConn(b"\0w", "alice", "default", {}))
    table.add_client(client(b"\0c", "alice"))
    table.start_request(b"\0c", "r1")
    table.start_request(b"\0c", "r2")
    conn, lost = table.remove_worker(b"\0w")
    assert conn is not None and lost == [(b"\0c", "r1"), (b"\0c", "r2")]
    assert table.inflight == {} and table.clients[b"\0c"].inflight == set()


def test_removing_a_client_reports_requests_to_cancel():
    table = RoutingTable()
    table.register_worker(WorkerConn(b"\0w", "alice", "default", {}))
    table.add_client(client(b"\0c", "alice"))
    table.start_request(b"\0c", "r1")
    tag = table.clients[b"\0c"].tag
    assert table.remove_client(b"\0c") == [(b"\0w", tag, "r1")]
    assert table.workers[b"\0w"].inflight == set() and table.by_tag == {}


def test_new_registration_replaces_the_old_worker_of_the_same_name():
    table = RoutingTable()
    table.register_worker(WorkerConn(b"\0old", "alice", "default", {}))
    replaced = table.register_worker(WorkerConn(b"\0new", "alice", "default", {}))
    assert replaced is not None and replaced.rid == b"\0old"
    assert table.worker_by_key[("alice", "default")] == b"\0new"


def test_every_client_connection_gets_its_own_random_route_tag():
    table = RoutingTable()
    tags = set()
    for index in range(200):
        rid = b"\0" + index.to_bytes(4, "big")
        table.add_client(client(rid, "alice"))
        tags.add(table.clients[rid].tag)
    assert len(tags) == 200 and table.by_tag == {c.tag: r for r, c in table.clients.items()}
    assert not tags & set(table.clients)  # no tag is a connection id
