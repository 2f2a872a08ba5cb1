"""A real broker in its own process, and raw protocol peers to attack or measure it with.

The broker runs as ``python -m rexec_broker`` on ports 0 (its log says which ports it got), so a
test can watch it die (an abort inside libzmq takes the whole process) and read its memory.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from rexec import protocol as p
from rexec.auth import create_static_token
from rexec.credentials import create_key_file, make_worker_credential, write_secret_file
from tests.support.workers import spawn_worker

_SERVING = re.compile(r"broker serving clients on (\S+), workers on (\S+)")
START_TIMEOUT = 20.0


@dataclass
class BrokerProcess:
    directory: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    signing_key: bytes
    tokens_file: Path
    frontend: str = ""
    backend: str = ""
    sockets: list[zmq.Socket] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mib(self) -> float:
        """Resident memory of the broker process, in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def add_user(self, user: str) -> str:
        return create_static_token(self.tokens_file, user)

    def credential(self, user: str, name: str = "default", **kwargs: object) -> str:
        return make_worker_credential(self.signing_key, user, name, **kwargs)  # type: ignore[arg-type]

    def dealer(
        self, url: str, source: str | None = None, routing_id: bytes | None = None
    ) -> zmq.Socket:
        """A raw DEALER to ``url``, from the loopback address ``source`` if given."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(with_source(url, source))
        self.sockets.append(sock)
        return sock

    def start_worker(self, user: str, name: str = "default") -> subprocess.Popen[bytes]:
        """A real worker process of ``user``, registered before this returns."""
        worker = spawn_worker(
            self.directory, len(self.workers), self.backend, self.credential(user, name)
        )
        self.workers.append(worker.proc)
        worker.wait_registered()
        return worker.proc

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        self.sockets.clear()
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def with_source(url: str, source: str | None) -> str:
    """``tcp://host:port`` connected from the local address ``source`` (libzmq's syntax)."""
    if source is None:
        return url
    return url.replace("tcp://", f"tcp://{source}:0;", 1)


def start_broker_process(
    directory: Path,
    args: Sequence[str] = (),
    open_files: int | None = None,
    env: dict[str, str] | None = None,
) -> BrokerProcess:
    """Start a broker in a subprocess; ``open_files`` caps its descriptor limit (soft and hard)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "signing.key"
    key = create_key_file(key_path)
    tokens = directory / "tokens.json"
    write_secret_file(tokens, b'{"tokens": []}')
    log_path = directory / "broker.log"
    preexec: Callable[[], None] | None = None
    if open_files is not None:
        limit = open_files

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rexec_broker",
                "--frontend",
                "tcp://127.0.0.1:0",
                "--backend",
                "tcp://127.0.0.1:0",
                "--signing-key",
                str(key_path),
                "--token-file",
                str(tokens),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )
    broker = BrokerProcess(directory, proc, log_path, key, tokens)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = _SERVING.search(broker.log())
        if found:
            broker.frontend, broker.backend = found.group(1), found.group(2)
            return broker
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited at start:\n{broker.log()}")
        time.sleep(0.05)
    broker.stop()
    raise RuntimeError(f"the broker did not start within {START_TIMEOUT} s:\n{broker.log()}")


def hello_seconds(broker: BrokerProcess, token: str, timeout: float = 30.0) -> float:
    """Seconds from a fresh connection to the broker's welcome for ``token``."""
    started = time.monotonic()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(broker.frontend)
        sock.send_multipart(p.make_hello(token, "default", {}))
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                break
            header = p.parse_header(sock.recv_multipart()[0])
            if header["t"] == p.WELCOME:
                return time.monotonic() - started
            if header["t"] == p.REFUSED:
                raise AssertionError(f"the broker refused a valid hello: {header}")
        raise AssertionError(f"no welcome within {timeout} s")
    finally:
        sock.close(0)


def silent_tcp(url: str, source: str | None = None) -> socket.socket:
    """A TCP connection to a broker port that never says a word."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    sock = socket.socket()
    if source is not None:
        sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((host, int(port)))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the other end closes ``sock`` within ``timeout`` s (ZMTP greeting bytes are
    read and ignored)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False
