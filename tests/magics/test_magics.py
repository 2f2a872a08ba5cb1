"""The Rexec magics in a real IPython kernel (the normal ``python3`` kernel) on a real stack.

Widget output is checked through the comm messages the Output widget produces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from tests.kernel.stack import (
    LocalStack,
    run_cell,
    shell_reply,
    start_kernel,
    stop_kernel,
    stream_text,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def kernel(local_stack: LocalStack) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(local_stack, kernel_name="python3", REXEC_QUIET="1")
    reply, _ = run_cell(kc, "%load_ext rexec_magics")
    assert reply["content"]["status"] == "ok"
    yield km, kc
    stop_kernel(km, kc)


@pytest.fixture
def kc(kernel: tuple[KernelManager, BlockingKernelClient]) -> BlockingKernelClient:
    return kernel[1]


def widget_outputs(messages: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """The last ``outputs`` of the cell's Output widget, and its header's last HTML."""
    models: dict[str, str] = {}
    state: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m["msg_type"] == "comm_open":
            comm = m["content"]["comm_id"]
            models[comm] = m["content"]["data"]["state"]["_model_name"]
            state[comm] = dict(m["content"]["data"]["state"])
        elif m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update":
            state.setdefault(m["content"]["comm_id"], {}).update(m["content"]["data"]["state"])
    outputs = [state[c] for c, name in models.items() if name == "OutputModel"]
    headers = [state[c] for c, name in models.items() if name == "HTMLModel"]
    assert len(outputs) == 1 and len(headers) == 1, models
    return list(outputs[0]["outputs"]), str(headers[0]["value"])


def execute_collect(kc: BlockingKernelClient, code: str, timeout: float = 60) -> tuple[Any, list]:
    """Run ``code``; every IOPub message until idle, with its arrival time, and the reply."""
    msg_id = kc.execute(code)
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        msg["_arrived"] = time.monotonic()
        seen.append(msg)
        if (
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id
        ):
            break
    reply = shell_reply(kc, msg_id, timeout)
    return reply, seen


def test_cell_streams_into_a_widget_with_a_header(kc):
    code = (
        "%%rexec\n"
        "import sys\n"
        "from IPython.display import HTML, display\n"
        "print('on the worker')\n"
        "print('careful', file=sys.stderr)\n"
        "display(HTML('<b>rich</b>'))\n"
        "6 * 7"
    )
    reply, messages = execute_collect(kc, code)
    assert reply["content"]["status"] == "ok"
    outputs, header = widget_outputs(messages)
    assert outputs[0] == {"output_type": "stream", "name": "stdout", "text": "on the worker\n"}
    assert outputs[1] == {"output_type": "stream", "name": "stderr", "text": "careful\n"}
    assert outputs[2]["output_type"] == "display_data"
    assert outputs[2]["data"]["text/html"] == "<b>rich</b>"
    assert outputs[3]["output_type"] == "execute_result"
    assert outputs[3]["data"]["text/plain"] == "42"
    assert "done" in header and "worker default (pid" in header


def test_widget_output_is_live(kc):
    code = "%%rexec\nimport time\nprint('early', flush=True)\ntime.sleep(2)\nprint('late')"
    _, messages = execute_collect(kc, code)
    idle_at = messages[-1]["_arrived"]
    early = [
        m
        for m in messages
        if m["msg_type"] == "comm_msg"
        and "early" in str(m["content"]["data"].get("state", {}).get("outputs", ""))
    ]
    assert early and idle_at - early[0]["_arrived"] > 1.0
    headers = [
        m["content"]["data"]["state"]["value"]
        for m in messages
        if m["msg_type"] == "comm_msg" and "value" in m["content"]["data"].get("state", {})
    ]
    assert any("running" in h for h in headers)  # the header ticks while the cell runs


def test_carriage_return_progress_updates_in_place(kc):
    code = (
        "%%rexec\n"
        "for i in range(5):\n"
        "    print(f'\\rprogress {i * 25}%', end='', flush=True)\n"
        "print()\n"
        "print('finished')"
    )
    _, messages = execute_collect(kc, code)
    outputs, _ = widget_outputs(messages)
    assert outputs == [
        {"output_type": "stream", "name": "stdout", "text": "progress 100%\nfinished\n"}
    ]


def test_remote_exception_shows_the_remote_traceback_and_raises(kc):
    reply, messages = execute_collect(
        kc, "%%rexec\ndef remote_step():\n    raise ValueError('bad input')\nremote_step()"
    )
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "RemoteCellError"
    errors = [m for m in messages if m["msg_type"] == "error"]
    assert len(errors) == 1
    traceback = "\n".join(errors[0]["content"]["traceback"])
    assert "remote_step" in traceback and "ValueError" in traceback
    assert "rexec_magics" not in traceback  # the magic's own frames are not shown
    _, header = widget_outputs(messages)
    assert "failed" in header


def test_quiet_prints_plainly(kc):
    reply, outputs = run_cell(kc, "%%rexec --quiet\nprint('plain')\n'value'")
    assert reply["content"]["status"] == "ok"
    assert not [m for m in outputs if m["msg_type"].startswith("comm")]
    assert stream_text(outputs) == "plain\n"
    assert [m["content"]["data"]["text/plain"] for m in outputs if "data" in m["content"]] == [
        "'value'"
    ]


def test_line_magic_keeps_quotes(kc):
    _, outputs = run_cell(kc, "%rexec print('a b', \"c\")")
    assert stream_text(outputs) == "a b c\n"


def test_timeout_cancels_the_remote_cell(kc):
    reply, _ = run_cell(kc, "%%rexec --quiet --timeout 1\nimport time\ntime.sleep(30)")
    assert reply["content"]["status"] == "error"
    assert "within 1.0 s" in reply["content"]["evalue"]


def test_push_and_pull_and_remote_func_share_the_worker(kc):
    run_cell(kc, "data = [1, 2, 3]\n%rexec_push data")
    run_cell(kc, "%rexec import os; total = sum(data); worker_pid = os.getpid()")
    reply, _ = run_cell(kc, "%rexec_pull total worker_pid")
    assert reply["content"]["status"] == "ok"
    code = (
        "from rexec import remote_func\n"
        "@remote_func\n"
        "def where():\n"
        "    import os\n"
        "    return os.getpid()\n"
        "(total, where() == worker_pid, worker_pid == __import__('os').getpid())"
    )
    _, outputs = run_cell(kc, code)
    result = next(m for m in outputs if m["msg_type"] == "execute_result")
    assert result["content"]["data"]["text/plain"] == "(6, True, False)"


def test_mistakes_raise_usage_errors_with_the_fix(kc):
    reply, _ = run_cell(kc, "%rexec_push not_defined_anywhere")
    assert reply["content"]["ename"] == "UsageError"
    assert "define them first" in reply["content"]["evalue"]
    reply, _ = run_cell(kc, "%rexec_pull missing_on_worker")
    assert "not defined on the worker" in reply["content"]["evalue"]
    reply, _ = run_cell(kc, "%rexec_push 1bad")
    assert "rexec_push a b" in reply["content"]["evalue"]
    reply, _ = run_cell(kc, "%rexec_env 'numpy>=1.26; $(touch /tmp/x)'")
    assert reply["content"]["ename"] == "UsageError"
    assert "requirements line 1" in reply["content"]["evalue"]
    reply, _ = run_cell(kc, "%rexec_env -- -r other.txt")
    assert "installer options are not allowed" in reply["content"]["evalue"]


def test_env_installs_with_the_log_in_a_widget(kc):
    reply, messages = execute_collect(kc, "%rexec_env packaging", timeout=120)
    assert reply["content"]["status"] == "ok", reply["content"]
    outputs, header = widget_outputs(messages)
    assert "packaging" in "".join(o.get("text", "") for o in outputs)
    assert "installed" in header


def test_status_reports_user_and_worker(kc):
    _, outputs = run_cell(kc, "%rexec_status")
    text = stream_text(outputs)
    assert "user:" in text and "worker: default (pid" in text


def test_interrupt_stops_the_remote_cell_and_keeps_its_namespace(kernel):
    km, kc = kernel
    run_cell(kc, "%rexec survivor = 'kept'")
    msg_id = kc.execute("%%rexec --quiet\nimport time\nprint('go', flush=True)\ntime.sleep(60)")
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and "go" in msg["content"]["text"]:
            break
    km.interrupt_kernel()
    reply = shell_reply(kc, msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    reply, outputs = run_cell(kc, "%rexec print(survivor)")
    assert reply["content"]["status"] == "ok", (reply["content"], outputs)
    assert stream_text(outputs) == "kept\n", outputs


def test_tab_completion_in_a_rexec_cell_completes_remote_names(kc):
    run_cell(kc, "%rexec only_on_the_worker_abc = 1")
    code = "%%rexec\nonly_on_the_wor"
    reply = shell_reply(kc, kc.complete(code, len(code)))["content"]
    assert "only_on_the_worker_abc" in reply["matches"]
    assert reply["cursor_start"] == len("%%rexec\n")
    # outside a %%rexec cell, local completion is untouched
    local = shell_reply(kc, kc.complete("only_on_the_wor", 15))["content"]
    assert "only_on_the_worker_abc" not in local["matches"]


def test_no_stack_is_a_usage_error_with_the_fix(local_stack, tmp_path):
    km, kc = start_kernel(local_stack, kernel_name="python3", REXEC_HOME=str(tmp_path))
    try:
        reply, _ = run_cell(kc, "%load_ext rexec_magics\n")
        reply, _ = run_cell(kc, "%%rexec\nprint(1)")
        assert reply["content"]["ename"] == "UsageError"
        assert "rexec up" in reply["content"]["evalue"]
    finally:
        stop_kernel(km, kc)


def test_connect_points_at_a_stack_and_refuses_a_missing_profile(kc, local_stack):
    reply, _ = run_cell(kc, "%rexec_connect --profile /nonexistent/profile.json")
    assert reply["content"]["ename"] == "UsageError"
    assert "rexec up" in reply["content"]["evalue"]
    profile = local_stack.home / "profile.json"
    reply, outputs = run_cell(kc, f"%rexec_connect --profile {profile}")
    assert reply["content"]["status"] == "ok", reply["content"]
    text = stream_text(outputs)
    assert "connected to http://127.0.0.1" in text and str(profile) in text
    assert "worker: default (pid" in text
    _, outputs = run_cell(kc, "%rexec print('after reconnecting')")
    assert stream_text(outputs) == "after reconnecting\n"


def test_remote_func_sees_what_rexec_cells_defined(kc):
    run_cell(kc, "%%rexec\ncalibration = 2.5\ndef scale(x):\n    return x * calibration")
    code = (
        "from rexec import remote_func\n"
        "@remote_func\n"
        "def calibrated(values):\n"
        "    return [scale(v) for v in values]\n"
        "calibrated([1, 2])"
    )
    reply, outputs = run_cell(kc, code)
    assert reply["content"]["status"] == "ok", reply["content"]
    result = next(m for m in outputs if m["msg_type"] == "execute_result")
    assert result["content"]["data"]["text/plain"] == "[2.5, 5.0]"
