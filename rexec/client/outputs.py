"""Where remote output goes on the client.

The worker sends Jupyter output content (stream, display_data, execute_result, error...). An
``OutputHandler`` receives each one, in order, on the thread waiting for the request. The default
writes streams to the ``sys.stdout``/``sys.stderr`` that were current when the request started
(so output from ``submit`` lands where it was asked for) and shows rich output through IPython
when it runs, as plain text otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO


class OutputHandler(Protocol):
    def handle(self, msg_type: str, content: dict[str, Any]) -> None: ...


class ConsoleOutput:
    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr

    def streams(self) -> tuple[TextIO, TextIO]:
        """Where text goes: ``(stdout, stderr)``."""
        return self._stdout, self._stderr

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        stdout, stderr = self.streams()
        if msg_type == "stream":
            target = stderr if content.get("name") == "stderr" else stdout
            target.write(str(content.get("text", "")))
            target.flush()
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            self._display(msg_type, content, stdout)
        elif msg_type == "error":
            stderr.write("\n".join(str(line) for line in content.get("traceback", [])) + "\n")
            stderr.flush()

    def _display(self, msg_type: str, content: dict[str, Any], stdout: TextIO) -> None:
        data = content.get("data") or {}
        shell = _ipython_shell()
        if shell is not None and msg_type != "execute_result":
            from IPython.display import publish_display_data

            transient = content.get("transient") or {}
            publish_display_data(
                data,
                content.get("metadata") or {},
                transient=transient,
                update=msg_type == "update_display_data",
            )
            return
        text = data.get("text/plain")
        if text is not None:
            stdout.write(str(text) + "\n")
            stdout.flush()


class CurrentConsoleOutput(ConsoleOutput):
    """A ``ConsoleOutput`` that writes to whatever ``sys.stdout``/``sys.stderr`` are when an
    output arrives: for a caller waiting on its own thread, the same as when the request started.
    One instance serves every synchronous call."""

    def __init__(self) -> None:
        super().__init__(sys.__stdout__, sys.__stderr__)

    def streams(self) -> tuple[TextIO, TextIO]:
        return sys.stdout, sys.stderr


CURRENT_CONSOLE = CurrentConsoleOutput()


class CollectingOutput:
    """Keeps every output as ``(msg_type, content)``; useful for tests and programmatic use."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        self.messages.append((msg_type, content))

    def text(self, name: str = "stdout") -> str:
        return "".join(
            str(c.get("text", ""))
            for t, c in self.messages
            if t == "stream" and c.get("name") == name
        )


def _ipython_shell() -> Any:
    module = sys.modules.get("IPython")
    if module is None:
        return None
    try:
        return module.get_ipython()
    except Exception:
        return None
