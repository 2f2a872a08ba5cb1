"""The ``rexec.status`` comm (what JupyterLab's status bar shows) with real kernels and a real
stack: the Rexec kernel answers a comm Lab opens; a kernel that loaded the magics opens one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from tests.kernel.stack import LocalStack, run_cell, start_kernel, stop_kernel, stream_text

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TARGET = "rexec.status"


class CommPeer:
    """Plays JupyterLab's side of the status comm over a real kernel connection."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.comm_id = ""
        self.messages: list[dict[str, Any]] = []

    def open(self) -> None:
        self.comm_id = uuid.uuid4().hex
        msg = self.kc.session.msg(
            "comm_open", {"comm_id": self.comm_id, "target_name": TARGET, "data": {}}
        )
        self.kc.shell_channel.send(msg)

    def send(self, data: dict[str, Any]) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def drain(self) -> None:
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except Exception:
                return
            self._keep(msg)

    def _keep(self, msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "comm_open" and content.get("target_name") == TARGET:
            self.comm_id = self.comm_id or content["comm_id"]
            self.messages.append(content.get("data") or {})
        elif msg["msg_type"] == "comm_msg" and content.get("comm_id") == self.comm_id:
            self.messages.append(content["data"])

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        for data in self.messages:
            if predicate(data):
                return data
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.05, deadline - time.monotonic()))
            except Exception:
                continue
            before = len(self.messages)
            self._keep(msg)
            for data in self.messages[before:]:
                if predicate(data):
                    return data
        states = [m.get("worker_state") for m in self.messages if m.get("type") == "status"]
        raise AssertionError(f"no matching status message within {timeout} s; saw {states}")

    def action(self, action: str, timeout: float = 120, **args: Any) -> dict[str, Any]:
        request = uuid.uuid4().hex
        self.send({"action": action, "request": request, **args})
        return self.wait_for(
            lambda d: d.get("type") == "done" and d.get("request") == request, timeout
        )


def status_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("type") == "status" and d.get("worker_state") == state


@pytest.fixture(scope="module")
def rexec_kernel(local_stack: LocalStack) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(local_stack)
    yield km, kc
    stop_kernel(km, kc)


def test_rexec_kernel_reports_ready_busy_and_the_worker(rexec_kernel):
    _, kc = rexec_kernel
    peer = CommPeer(kc)
    peer.open()
    ready = peer.wait_for(status_is("ready"))
    assert ready["source"] == "kernel"
    assert isinstance(ready["worker"]["pid"], int)
    assert ready["worker"]["host"]
    msg_id = kc.execute("import time; time.sleep(2.5)")
    busy = peer.wait_for(status_is("busy"), timeout=10)
    assert busy["worker"]["pid"] == ready["worker"]["pid"]
    # While the cell runs, the worker's CPU and memory are sampled.
    sampled = peer.wait_for(
        lambda d: status_is("busy")(d) and (d.get("resources") or {}).get("rss_bytes"), 10
    )
    assert sampled["resources"]["rss_bytes"] > 1_000_000
    peer.messages.clear()
    peer.wait_for(status_is("ready"), timeout=20)
    reply = kc.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=10)
    assert reply["content"]["status"] == "ok"


def test_log_action_returns_the_workers_output(rexec_kernel):
    _, kc = rexec_kernel
    marker = f"log-marker-{uuid.uuid4().hex[:8]}"
    # Written after the cell ended, so it goes to the worker's own output, not the cell's.
    run_cell(
        kc, f"import os, threading; threading.Timer(0.3, os.write, (2, b'{marker}\\n')).start()"
    )
    time.sleep(1)
    peer = CommPeer(kc)
    peer.open()
    done = peer.action("log", tail=50)
    assert done["ok"], done
    assert marker in done["text"]
    assert len(done["text"].splitlines()) <= 50


def test_restart_action_replaces_the_worker(rexec_kernel):
    _, kc = rexec_kernel
    _, outputs = run_cell(kc, "import os; kept = 1; print(os.getpid())")
    old_pid = int(stream_text(outputs).strip())
    peer = CommPeer(kc)
    peer.open()
    peer.wait_for(status_is("ready"))
    done = peer.action("restart", timeout=120)
    assert done["ok"], done
    assert "new worker" in done["message"]
    peer.wait_for(lambda d: status_is("ready")(d) and d["worker"]["pid"] != old_pid, 30)
    _, outputs = run_cell(kc, "import os; print(os.getpid()); print('kept' in dir())")
    pid, kept = stream_text(outputs).split()
    assert int(pid) != old_pid
    assert kept == "False"


def test_unknown_action_is_refused(rexec_kernel):
    _, kc = rexec_kernel
    peer = CommPeer(kc)
    peer.open()
    done = peer.action("format-disk", timeout=10)
    assert done["ok"] is False
    assert "unknown action" in done["message"]


def test_magics_open_the_comm_and_track_rexec_cells(local_stack):
    km, kc = start_kernel(local_stack, kernel_name="python3", REXEC_QUIET="1")
    try:
        peer = CommPeer(kc)
        reply, outputs = run_cell(kc, "%load_ext rexec_magics")
        assert reply["content"]["status"] == "ok"
        for message in outputs:
            peer._keep(message)
        opened = peer.wait_for(lambda d: d.get("type") == "status", timeout=10)
        assert opened["source"] == "magics"
        assert opened["worker_state"] == "not connected"
        kc.execute("%%rexec --quiet\nimport time; time.sleep(2)")
        peer.wait_for(lambda d: d.get("worker_state") in ("starting", "busy"), timeout=20)
        peer.wait_for(status_is("busy"), timeout=60)
        ready = peer.wait_for(status_is("ready"), timeout=60)
        assert isinstance(ready["worker"]["pid"], int)
    finally:
        stop_kernel(km, kc)
