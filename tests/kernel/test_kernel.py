"""The Rexec kernel end to end: a real kernel process (jupyter_client) on a real local stack."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from tests.kernel.stack import (
    LocalStack,
    coalesce_streams,
    run_cell,
    shell_reply,
    start_kernel,
    stop_kernel,
    stream_text,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def kernel(local_stack: LocalStack) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(local_stack)
    yield km, kc
    stop_kernel(km, kc)


@pytest.fixture
def kc(kernel: tuple[KernelManager, BlockingKernelClient]) -> BlockingKernelClient:
    return kernel[1]


def iopub_until_idle(kc: BlockingKernelClient, msg_id: str, timeout: float = 60) -> list[Any]:
    """Every IOPub message up to the idle status of ``msg_id`` (all parents, in order)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(msg)
        if (
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id
        ):
            return seen


def test_kernel_info_reports_the_workers_python(kc, local_stack):
    reply = kc.kernel_info(reply=True, timeout=30)["content"]
    assert reply["implementation"] == "rexec"
    assert reply["language_info"]["name"] == "python"
    _, outputs = run_cell(kc, "import platform; print(platform.python_version())")
    assert stream_text(outputs).strip() == reply["language_info"]["version"]


def test_cells_run_remotely_in_a_persistent_namespace(kc):
    reply, outputs = run_cell(kc, "import os\nremote_pid = os.getpid()\nprint(remote_pid)")
    assert reply["content"]["status"] == "ok"
    assert int(stream_text(outputs)) != os.getpid()
    reply, outputs = run_cell(kc, "remote_pid * 0 + 7")
    results = [m for m in outputs if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "7"
    # execution_count is the worker's: the result and the reply agree
    assert results[0]["content"]["execution_count"] == reply["content"]["execution_count"]


def test_outputs_arrive_in_order_with_rich_types(kc):
    code = (
        "import sys\n"
        "from IPython.display import display, HTML, clear_output\n"
        "print('one')\n"
        "print('two', file=sys.stderr)\n"
        "display(HTML('<b>three</b>'), display_id='d1')\n"
        "from IPython.display import update_display\n"
        "update_display(HTML('<i>four</i>'), display_id='d1')\n"
        "clear_output(wait=True)\n"
        "print('five')\n"
        "'six'"
    )
    run_cell(kc, "pass")  # the first cell of a kernel may show the worker's start-up progress
    reply, outputs = run_cell(kc, code)
    assert reply["content"]["status"] == "ok"
    outputs = coalesce_streams(outputs)
    kinds = [m["msg_type"] for m in outputs]
    assert kinds == [
        "stream",
        "stream",
        "display_data",
        "update_display_data",
        "clear_output",
        "stream",
        "execute_result",
    ]
    assert outputs[0]["content"] == {"name": "stdout", "text": "one\n"}
    assert outputs[1]["content"]["name"] == "stderr"
    assert outputs[2]["content"]["data"]["text/html"] == "<b>three</b>"
    assert outputs[3]["content"]["transient"] == {"display_id": "d1"}
    assert outputs[6]["content"]["data"]["text/plain"] == "'six'"


def test_outputs_are_live_not_buffered(kc):
    msg_id = kc.execute("import time\nprint('early', flush=True)\ntime.sleep(3)\nprint('late')")
    start = time.monotonic()
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream":
            break
    assert msg["content"]["text"].startswith("early")
    assert time.monotonic() - start < 2.5
    iopub_until_idle(kc, msg_id)
    shell_reply(kc, msg_id)


def test_parent_headers_match_their_request(kc):
    first = kc.execute("print('from first')")
    second = kc.execute("print('from second')")
    messages = iopub_until_idle(kc, first) + iopub_until_idle(kc, second)
    text_by_parent: dict[str, str] = {}
    for m in messages:
        if m["msg_type"] == "stream":
            parent = m["parent_header"]["msg_id"]
            text_by_parent[parent] = text_by_parent.get(parent, "") + m["content"]["text"]
    assert text_by_parent == {first: "from first\n", second: "from second\n"}
    assert shell_reply(kc, first)["content"]["status"] == "ok"
    assert shell_reply(kc, second)["content"]["status"] == "ok"


def test_errors_carry_the_remote_traceback(kc):
    reply, outputs = run_cell(kc, "def boom():\n    raise ValueError('remote bad')\nboom()")
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "ValueError" and content["evalue"] == "remote bad"
    errors = [m for m in outputs if m["msg_type"] == "error"]
    assert len(errors) == 1
    assert "boom" in "\n".join(errors[0]["content"]["traceback"])


def test_is_complete_and_history(kc):
    def is_complete(code: str) -> dict[str, Any]:
        return shell_reply(kc, kc.is_complete(code))["content"]

    assert is_complete("for i in range(3):") == {"status": "incomplete", "indent": "    "}
    assert is_complete("x = 1")["status"] == "complete"
    assert is_complete("x = (1,")["status"] == "incomplete"
    assert is_complete("1 +* 2")["status"] == "invalid"
    run_cell(kc, "history_marker = 1")
    history = kc.history(hist_access_type="tail", n=1, reply=True)["content"]["history"]
    assert history[-1][2] == "history_marker = 1"


def test_complete_from_the_remote_namespace(kc):
    run_cell(kc, "remote_only_variable_xyz = 1")
    reply = kc.complete("remote_only_var", reply=True, timeout=30)["content"]
    assert "remote_only_variable_xyz" in reply["matches"]
    assert reply["cursor_start"] == 0


def test_inspect_from_the_remote_namespace(kc):
    run_cell(kc, "def documented_remotely():\n    'Docstring only the worker knows.'\n")
    reply = kc.inspect("documented_remotely", reply=True, timeout=30)["content"]
    assert reply["found"] is True
    assert "Docstring only the worker knows." in reply["data"]["text/plain"]


def test_interrupt_stops_the_remote_cell_and_keeps_the_namespace(kernel):
    km, kc = kernel
    run_cell(kc, "kept = 'still here'")
    msg_id = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream":
            break
    start = time.monotonic()
    km.interrupt_kernel()
    reply = shell_reply(kc, msg_id)
    assert time.monotonic() - start < 10
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    iopub_until_idle(kc, msg_id)
    _, outputs = run_cell(kc, "print(kept)")
    assert stream_text(outputs) == "still here\n"


def test_dead_worker_ends_the_cell_and_the_next_cell_gets_a_new_one(local_stack):
    km, kc = start_kernel(local_stack)
    try:
        _, outputs = run_cell(kc, "import os\nlost = 1\nprint(os.getpid())")
        worker_pid = int(stream_text(outputs))
        msg_id = kc.execute("import time\nprint('working', flush=True)\ntime.sleep(60)")
        while kc.get_iopub_msg(timeout=30)["msg_type"] != "stream":
            pass
        os.kill(worker_pid, signal.SIGKILL)
        start = time.monotonic()
        reply = shell_reply(kc, msg_id)
        assert time.monotonic() - start < 15
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "WorkerDied"
        iopub_until_idle(kc, msg_id)
        reply, outputs = run_cell(kc, "import os\nprint(os.getpid())\n'lost' in globals()")
        assert reply["content"]["status"] == "ok"
        assert "state is lost" in stream_text(outputs, "stderr")
        assert int(stream_text(outputs)) != worker_pid
        result = next(m for m in outputs if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "False"
    finally:
        stop_kernel(km, kc)


def test_restart_gives_a_fresh_remote_namespace(local_stack):
    km, kc = start_kernel(local_stack)
    try:
        run_cell(kc, "before_restart = 1")
        kc.stop_channels()
        km.restart_kernel(now=False)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply, outputs = run_cell(kc, "'before_restart' in globals()")
        assert reply["content"]["status"] == "ok"
        result = next(m for m in outputs if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "False"
    finally:
        stop_kernel(km, kc)


def test_without_a_stack_cells_fail_with_the_fix(local_stack, tmp_path):
    km, kc = start_kernel(local_stack, REXEC_HOME=str(tmp_path))
    try:
        reply, outputs = run_cell(kc, "1 + 1", timeout=30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "ConfigError"
        assert "rexec up" in reply["content"]["evalue"]
        assert [m["msg_type"] for m in outputs] == ["error"]
    finally:
        stop_kernel(km, kc)


def test_user_expressions_are_evaluated_remotely(kc):
    run_cell(kc, "remote_value = 20")
    msg_id = kc.execute("remote_value += 1", user_expressions={"doubled": "remote_value * 2"})
    reply = kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=60)
    expressions = reply["content"]["user_expressions"]
    assert expressions["doubled"]["status"] == "ok"
    assert expressions["doubled"]["data"]["text/plain"] == "42"
