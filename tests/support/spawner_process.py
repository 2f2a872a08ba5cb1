"""A spawner in a process of its own, for tests that watch its memory or restart it.

``python -m tests.support.spawner_process`` reads its settings from ``REXEC_*`` variables like the
real command line does, serves under uvicorn on a socket bound to 127.0.0.1 port 0, and prints
the port on its first stdout line. :func:`spawner_process` starts one and waits until it answers.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


@dataclass
class SpawnerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def reset_peak(self) -> bool:
        """Make ``VmHWM`` restart from the current RSS; False where the kernel does not allow it."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def spawner_process(env: Mapping[str, str], log_path: Path) -> Iterator[SpawnerProcess]:
    """Run a spawner with exactly ``env`` until the block ends; yields it once it answers."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.spawner_process"],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        port = _read_port(process, log_path)
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(url, process, log_path)
        yield SpawnerProcess(url, port, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


def _read_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        raise RuntimeError(f"the spawner process did not report its port:\n{log}")
    return int(line)


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the spawner process exited:\n{log_path.read_text()}")
        try:
            httpx.get(f"{url}/healthz", timeout=1.0)
            return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the spawner at {url} did not answer within {START_TIMEOUT} s")
        time.sleep(0.05)


def main() -> None:
    import uvicorn

    from rexec.logs import configure_logging
    from rexec_spawner.app import create_app
    from rexec_spawner.config import SpawnerSettings

    configure_logging("info")
    app = create_app(SpawnerSettings.from_env())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    os.dup2(2, 1)  # later output goes to the log, not to the pipe the parent stops reading
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
