"""A reference point between the raw floor and Rexec: the least a Python relay must do.

The broker parses each JSON header and routes replies by request id; the worker unpickles the
function and its arguments, calls it and pickles the result; the client builds the header and
reads the reply. No authentication, no output capture, no cancellation, no concurrency, and the
leanest calls available (pyzmq's compiled send/recv, JSON's scanner without ``json.loads``'s
wrapper). What separates it from the raw floor is the cost of running any Python per message on
this machine; what separates Rexec from it is the cost of Rexec's features.

``python -m benchmarks.minimal broker FRONTEND BACKEND`` and ``... worker BACKEND`` run the
processes; ``MinimalClient`` is the client side.
"""

from __future__ import annotations

import itertools
import json
import pickle
import sys
from typing import Any

import zmq

_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
SNDMORE = int(zmq.SNDMORE)
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def noop() -> None:
    """The function the benchmark calls; importable here, so it travels by reference."""


def echo(value: Any) -> Any:
    return value


def loads_header(frame: zmq.Frame) -> dict[str, Any]:
    value, _ = _scan(str(frame.buffer, "utf-8"), 0)
    return dict(value)


def receive(sock: zmq.Socket) -> list[zmq.Frame]:
    frame = _recv(sock, 0, False)
    frames = [frame]
    while frame.more:
        frame = _recv(sock, 0, False)
        frames.append(frame)
    return frames


def send(sock: zmq.Socket, frames: list[Any]) -> None:
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _send(sock, frame, 0 if index == last else SNDMORE, False)


def run_broker(frontend_url: str, backend_url: str) -> None:
    context = zmq.Context()
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
    frontend.bind(frontend_url)
    backend.bind(backend_url)
    worker = backend.recv_multipart()[0]
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    routes: dict[str, bytes] = {}
    while True:
        events = dict(poller.poll())
        if frontend in events:
            frames = receive(frontend)
            header = loads_header(frames[1])
            if header.get("t") == "request":
                routes[header["id"]] = frames[0].bytes
                send(backend, [worker, *frames])
        if backend in events:
            frames = receive(backend)  # worker identity, client identity, header, ...
            client = routes.pop(loads_header(frames[2])["id"], None)
            if client is not None:
                send(frontend, [client, *frames[2:]])


def run_worker(backend_url: str) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(backend_url)
    sock.send(b"ready")
    functions: dict[str, Any] = {}
    while True:
        frames = receive(sock)  # client identity, header, function, arguments, buffers...
        header = loads_header(frames[1])
        fn = functions.get(header["fn"])
        if fn is None:
            fn = functions[header["fn"]] = pickle.loads(frames[2].buffer)
        args = pickle.loads(frames[3].buffer, buffers=[f.buffer for f in frames[4:]])
        buffers: list[pickle.PickleBuffer] = []
        result = pickle.dumps(fn(*args), protocol=5, buffer_callback=buffers.append)
        reply = b'{"v":1,"t":"reply","id":"' + header["id"].encode() + b'","status":"ok"}'
        send(sock, [frames[0], reply, result, *buffers])


class MinimalClient:
    """The client side: one DEALER, requests built from a template, replies read in order."""

    def __init__(self, frontend_url: str, timeout_ms: int = 10_000) -> None:
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, timeout_ms)  # a failed relay ends the run, not hangs it
        self._sock.connect(frontend_url)
        self._ids = itertools.count()
        self._functions: dict[int, bytes] = {}

    def _request(self, fn: Any, args: tuple[Any, ...]) -> None:
        data = self._functions.get(id(fn))
        if data is None:
            data = self._functions[id(fn)] = pickle.dumps(fn)
        buffers: list[pickle.PickleBuffer] = []
        packed = pickle.dumps(args, protocol=5, buffer_callback=buffers.append)
        request_id, key = str(next(self._ids)).encode(), hex(id(fn)).encode()
        header = b'{"v":1,"t":"request","id":"m-' + request_id + b'","op":"call","fn":"' + key
        send(self._sock, [header + b'"}', data, packed, *buffers])

    def _reply(self) -> Any:
        frames = receive(self._sock)
        if loads_header(frames[0]).get("status") != "ok":
            raise RuntimeError("the minimal worker failed")
        return pickle.loads(frames[1].buffer, buffers=[f.buffer for f in frames[2:]])

    def call(self, fn: Any, args: tuple[Any, ...] = ()) -> Any:
        self._request(fn, args)
        return self._reply()

    def pipelined(self, fn: Any, calls: int, window: int = 500) -> None:
        sent = received = 0
        while received < calls:
            while sent < calls and sent - received < window:
                self._request(fn, ())
                sent += 1
            self._reply()
            received += 1

    def close(self) -> None:
        self._sock.close()


if __name__ == "__main__":
    if sys.argv[1] == "broker":
        run_broker(sys.argv[2], sys.argv[3])
    else:
        run_worker(sys.argv[2])
