"""Run an ASGI app under a real uvicorn server on 127.0.0.1, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import httpx
import uvicorn

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A port nothing listens on right now (closed again before returning)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, probe: str = "/", timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL, once it answers HTTP at ``probe``.

    The socket is bound before the server starts, so the port is known and cannot be taken by
    another test in between. Lifespan events run, so app shutdown hooks are exercised too.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(base_url + probe, thread, errors, timeout)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} did not stop within {STOP_TIMEOUT} s")


def _wait_until_answering(
    url: str, thread: threading.Thread, errors: list[BaseException], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if errors:
            raise RuntimeError(f"server for {url} failed to start") from errors[0]
        if not thread.is_alive():
            raise RuntimeError(f"server for {url} exited during startup")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"server for {url} did not answer within {timeout} s")
        time.sleep(0.05)
