"""Keeping a cell's remote outputs as a list of nbformat outputs, as the Output widget holds them.

Pure: no widgets, no I/O. ``OutputList`` applies Jupyter output messages in order (stream
chunks joined, ``\\r`` progress lines overwritten in place, display updates by display id,
``clear_output(wait=True)``), and ``outputs()`` gives the nbformat list to show.

>>> outputs = OutputList()
>>> outputs.apply("stream", {"name": "stdout", "text": "10%\\r"})
>>> outputs.apply("stream", {"name": "stdout", "text": "50%\\r100%\\ndone\\n"})
>>> outputs.outputs()
[{'output_type': 'stream', 'name': 'stdout', 'text': '100%\\ndone\\n'}]
"""

from __future__ import annotations

from typing import Any


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows for ``text`` when each ``\\r`` rewrites its whole line.

    A trailing ``\\r`` is kept, so that the next chunk overwrites the line.

    >>> collapse_carriage_returns("a\\rb\\nc\\r")
    'b\\nc\\r'
    """
    lines = text.split("\n")
    shown = []
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        segments = line.split("\r")
        visible = next((s for s in reversed(segments) if s), "")
        if last and line.endswith("\r") and visible:
            visible += "\r"
        shown.append(visible)
    return "\n".join(shown)


class OutputList:
    """The nbformat outputs of one cell, built from output messages."""

    def __init__(self) -> None:
        self._outputs: list[dict[str, Any]] = []
        self._clear_pending = False

    def apply(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._outputs.clear()
            return
        if msg_type == "update_display_data":
            self._update(content)
            return
        if self._clear_pending:
            self._outputs.clear()
            self._clear_pending = False
        if msg_type == "stream":
            self._stream(str(content.get("name", "stdout")), str(content.get("text", "")))
        elif msg_type in ("display_data", "execute_result"):
            output = {
                "output_type": msg_type,
                "data": content.get("data") or {},
                "metadata": content.get("metadata") or {},
            }
            if msg_type == "execute_result":
                output["execution_count"] = content.get("execution_count")
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id:
                output["_display_id"] = display_id
            self._outputs.append(output)
        elif msg_type == "error":
            self._outputs.append(
                {
                    "output_type": "error",
                    "ename": content.get("ename", ""),
                    "evalue": content.get("evalue", ""),
                    "traceback": list(content.get("traceback") or []),
                }
            )

    def _stream(self, name: str, text: str) -> None:
        last = self._outputs[-1] if self._outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] = collapse_carriage_returns(last["text"] + text)
        else:
            self._outputs.append(
                {"output_type": "stream", "name": name, "text": collapse_carriage_returns(text)}
            )

    def _update(self, content: dict[str, Any]) -> None:
        display_id = (content.get("transient") or {}).get("display_id")
        for output in self._outputs:
            if display_id and output.get("_display_id") == display_id:
                output["data"] = content.get("data") or {}
                output["metadata"] = content.get("metadata") or {}

    def outputs(self) -> list[dict[str, Any]]:
        """The outputs to show (internal keys dropped, a pending ``\\r`` not shown)."""
        shown = []
        for output in self._outputs:
            item = {k: v for k, v in output.items() if not k.startswith("_")}
            if item["output_type"] == "stream":
                item["text"] = item["text"].rstrip("\r")
            shown.append(item)
        return shown
