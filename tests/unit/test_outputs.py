"""Where remote output lands on the client, with no sockets."""

from __future__ import annotations

import contextlib
import io

from rexec.client.outputs import CURRENT_CONSOLE, ConsoleOutput


def test_console_output_keeps_the_streams_current_when_it_was_made():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        console = ConsoleOutput()
    later = io.StringIO()
    with contextlib.redirect_stdout(later):
        console.handle("stream", {"name": "stdout", "text": "to the first\n"})
        console.handle("stream", {"name": "stderr", "text": "oops\n"})
        console.handle("execute_result", {"data": {"text/plain": "42"}})
    assert out.getvalue() == "to the first\n42\n"
    assert err.getvalue() == "oops\n"
    assert later.getvalue() == ""


def test_the_shared_console_writes_where_stdout_points_when_output_arrives():
    first, second, err = io.StringIO(), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        CURRENT_CONSOLE.handle("stream", {"name": "stdout", "text": "a"})
    with contextlib.redirect_stdout(second), contextlib.redirect_stderr(err):
        CURRENT_CONSOLE.handle("stream", {"name": "stdout", "text": "b"})
        CURRENT_CONSOLE.handle("error", {"traceback": ["Traceback", "ValueError: x"]})
    assert (first.getvalue(), second.getvalue()) == ("a", "b")
    assert err.getvalue() == "Traceback\nValueError: x\n"
