"""Relaying the worker's outputs to the kernel's IOPub channel, verbatim.

The worker already sends Jupyter message-spec content (stream, display_data,
update_display_data, execute_result, error, clear_output), so relaying is one ``send`` per
output, under the parent header of the execute_request that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Send = Callable[[str, dict[str, Any]], None]

RELAYED = frozenset(
    {
        "stream",
        "display_data",
        "update_display_data",
        "execute_result",
        "error",
        "clear_output",
    }
)


class IopubRelay:
    """An ``OutputHandler`` that publishes each output with ``send(msg_type, content)``.

    >>> sent = []
    >>> relay = IopubRelay(lambda t, c: sent.append((t, c)))
    >>> relay.handle("stream", {"name": "stdout", "text": "hi"})
    >>> sent
    [('stream', {'name': 'stdout', 'text': 'hi'})]
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.saw_error = False

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type not in RELAYED:
            return
        if msg_type == "error":
            self.saw_error = True
        self._send(msg_type, content)


def make_error_content(ename: str, evalue: str, hint: str | None = None) -> dict[str, Any]:
    """Error content for failures of the connection, not of user code.

    >>> make_error_content("WorkerDied", "the worker died")["traceback"]
    ['WorkerDied: the worker died']
    """
    lines = [f"{ename}: {evalue}"]
    if hint:
        lines.append(hint)
    return {"ename": ename, "evalue": evalue, "traceback": lines}
