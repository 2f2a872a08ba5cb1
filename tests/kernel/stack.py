"""A real local Rexec stack and real Jupyter kernels for the notebook-facing tests.

The stack is started with ``python -m rexec up --detach`` in its own REXEC_HOME; kernels get an
explicit environment pointing at it (the per-test ``isolated_home`` fixture moves REXEC_HOME,
and kernels started later must still find this stack).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from rexec_kernel.kernelspec import KERNEL_NAME, write_kernel_spec

STARTUP_TIMEOUT = 60


@dataclass
class LocalStack:
    home: Path
    jupyter_path: Path

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for kernels and notebooks: this stack, our kernelspec, quiet logs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REXEC_")}
        env.update(
            REXEC_HOME=str(self.home),
            JUPYTER_PATH=os.pathsep.join(
                [str(self.jupyter_path), *filter(None, [os.environ.get("JUPYTER_PATH")])]
            ),
            PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
            ),
        )
        env.update(extra)
        return env

    def rexec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rexec", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )


def start_stack() -> Iterator[LocalStack]:
    with tempfile.TemporaryDirectory(prefix="rexec-nb-") as tmp:
        root = Path(tmp)
        jupyter_path = root / "jupyter"
        write_kernel_spec(jupyter_path / "kernels" / KERNEL_NAME)
        stack = LocalStack(root / "home", jupyter_path)
        stack.home.mkdir()
        up = stack.rexec(
            "up", "--detach", "--broker-port", "0", "--backend-port", "0", "--spawner-port", "0"
        )
        assert up.returncode == 0, up.stderr
        try:
            yield stack
        finally:
            stack.rexec("down")


@pytest.fixture(scope="module")
def local_stack() -> Iterator[LocalStack]:
    yield from start_stack()


def start_kernel(
    stack: LocalStack, kernel_name: str = KERNEL_NAME, **env: str
) -> tuple[KernelManager, BlockingKernelClient]:
    specs = KernelSpecManager()
    specs.kernel_dirs = [str(stack.jupyter_path / "kernels"), *specs.kernel_dirs]
    km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=specs)
    km.start_kernel(env=stack.env(**env))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
    except RuntimeError:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def run_cell(
    kc: BlockingKernelClient, code: str, timeout: float = 60, **kwargs: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; return the execute_reply message and the IOPub messages of the cell
    (output messages only, in order, each with its parent header checked)."""
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, output_hook=outputs.append, timeout=timeout, **kwargs)
    for message in outputs:
        assert message["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]
    kept = [m for m in outputs if m["msg_type"] not in ("status", "execute_input")]
    return reply, kept


def stream_text(messages: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def coalesce_streams(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive stream messages of one name: a print may arrive in several chunks."""
    joined: list[dict[str, Any]] = []
    for message in messages:
        last = joined[-1] if joined else None
        if (
            last is not None
            and message["msg_type"] == last["msg_type"] == "stream"
            and message["content"]["name"] == last["content"]["name"]
        ):
            text = last["content"]["text"] + message["content"]["text"]
            joined[-1] = {**last, "content": {**last["content"], "text": text}}
        else:
            joined.append(message)
    return joined


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    """The shell reply to ``msg_id`` (replies to earlier requests, e.g. kernel_info, skipped)."""
    while True:
        reply: dict[str, Any] = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply
