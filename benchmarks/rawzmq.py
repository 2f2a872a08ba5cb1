"""The floor: a bare ROUTER-ROUTER broker and a bare DEALER echo worker, no Rexec code.

``python -m benchmarks.rawzmq broker FRONTEND BACKEND`` and ``... echo BACKEND`` run them as
separate processes, so the floor crosses the same process and TCP boundaries as Rexec does.
"""

from __future__ import annotations

import sys

import zmq


def run_broker(frontend_url: str, backend_url: str) -> None:
    context = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    backend = context.socket(zmq.ROUTER)
    frontend.bind(frontend_url)
    backend.bind(backend_url)
    worker = backend.recv_multipart()[0]  # the echo worker says hello first
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if frontend in events:
            frames = frontend.recv_multipart(copy=False)
            backend.send_multipart([worker, *frames], copy=False)
        if backend in events:
            frames = backend.recv_multipart(copy=False)
            frontend.send_multipart(frames[1:], copy=False)


def run_echo(backend_url: str) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(backend_url)
    sock.send(b"ready")
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "broker":
        run_broker(sys.argv[2], sys.argv[3])
    else:
        run_echo(sys.argv[2])
