"""Real worker processes (``python -m rexec worker``) for tests, started by hand with a
credential file instead of by a spawner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rexec.credentials import write_secret_file

REGISTER_TIMEOUT = 30.0


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    status_file: Path
    log_file: Path

    def status(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_registered(self, timeout: float = REGISTER_TIMEOUT) -> None:
        """Until the worker says it registered; AssertionError with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status().get("state") == "registered":
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the worker did not register; its log:\n{self.log()}")


def spawn_worker(
    directory: Path,
    index: int,
    broker_backend: str,
    credential: str,
    public_key: str | None = None,
) -> WorkerProcess:
    """Start worker number ``index`` with ``credential``, its files in ``directory``."""
    cred_file = directory / f"worker-{index}.cred"
    write_secret_file(cred_file, credential.encode())
    status_file = directory / f"worker-{index}.json"
    log_file = directory / f"worker-{index}.log"
    env = {**os.environ, "REXEC_WORKER_CREDENTIAL_FILE": str(cred_file)}
    if public_key:
        env["REXEC_BROKER_PUBLIC_KEY"] = public_key
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rexec",
                "worker",
                "--broker",
                broker_backend,
                "--status-file",
                str(status_file),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(proc, status_file, log_file)
