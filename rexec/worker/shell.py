"""The worker's IPython shell: a persistent namespace for cells, with Jupyter-spec outputs.

Display calls, the display hook (``Out[n]``) and tracebacks are turned into display_data,
execute_result and error content for the request running on the current thread, exactly the
content a Jupyter kernel would put on its IOPub channel.
"""

from __future__ import annotations

from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type
from traitlets.config import Config

from rexec.worker.context import current_context


class _ContextDisplayPublisher(DisplayPublisher):
    def publish(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: str | None = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        ctx = current_context()
        if ctx is None:
            return
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        ctx.publish("update_display_data" if update else "display_data", content)

    def clear_output(self, wait: bool = False) -> None:
        ctx = current_context()
        if ctx is not None:
            ctx.publish("clear_output", {"wait": wait})


class _ContextDisplayHook(DisplayHook):
    """Sends ``Out[n]`` values as execute_result instead of printing them."""

    _content: dict[str, Any] | None = None

    def start_displayhook(self) -> None:
        self._content = {"execution_count": self.prompt_count, "data": {}, "metadata": {}}

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
        if self._content is not None:
            self._content["data"] = format_dict
            self._content["metadata"] = md_dict or {}

    def finish_displayhook(self) -> None:
        ctx = current_context()
        if ctx is not None and self._content is not None and self._content["data"]:
            ctx.publish("execute_result", self._content)
        self._content = None


class WorkerShell(InteractiveShell):
    displayhook_class = Type(_ContextDisplayHook)
    display_pub_class = Type(_ContextDisplayPublisher)

    last_error: dict[str, Any] | None = None

    def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
        content = {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": str(evalue),
            "traceback": list(stb),
        }
        self.last_error = content
        ctx = current_context()
        if ctx is not None:
            ctx.publish("error", content)

    def enable_gui(self, gui: Any = None) -> None:
        pass  # no event loop integration on a headless worker


def create_shell() -> WorkerShell:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "Linux"
    config.InteractiveShell.xmode = "Context"
    # IPython's own completer: jedi (as pinned with some IPython releases) returns no matches.
    config.IPCompleter.use_jedi = False
    return WorkerShell.instance(config=config)


def execute(
    shell: WorkerShell,
    code: str,
    silent: bool,
    store_history: bool,
    user_expressions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a cell; return the Jupyter execute_reply content.

    ``user_expressions`` are evaluated after a successful cell, as a Jupyter kernel does.
    """
    shell.last_error = None
    result = shell.run_cell(code, store_history=store_history, silent=silent)
    count = result.execution_count if result.execution_count is not None else shell.execution_count
    if result.success:
        expressions = shell.user_expressions(user_expressions) if user_expressions else {}
        return {
            "status": "ok",
            "execution_count": count,
            "user_expressions": expressions,
            "payload": [],
        }
    error = shell.last_error or {
        "ename": type(result.error_in_exec or result.error_before_exec).__name__,
        "evalue": str(result.error_in_exec or result.error_before_exec),
        "traceback": [],
    }
    return {"status": "error", "execution_count": count, **error}


def complete(shell: WorkerShell, code: str, cursor_pos: int | None) -> dict[str, Any]:
    """Jupyter complete_reply content from the worker's namespace."""
    if cursor_pos is None:
        cursor_pos = len(code)
    line, offset = _line_at(code, cursor_pos)
    text, matches = shell.complete("", line, cursor_pos - offset)
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": cursor_pos - len(text),
        "cursor_end": cursor_pos,
        "metadata": {},
    }


def inspect(shell: WorkerShell, code: str, cursor_pos: int | None, detail: int) -> dict[str, Any]:
    """Jupyter inspect_reply content for the name at the cursor."""
    from IPython.utils.tokenutil import token_at_cursor

    name = token_at_cursor(code, len(code) if cursor_pos is None else cursor_pos)
    try:
        bundle = shell.object_inspect_mime(name, detail_level=detail)
    except KeyError:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    return {"status": "ok", "found": True, "data": bundle, "metadata": {}}


def _line_at(code: str, cursor_pos: int) -> tuple[str, int]:
    start = code.rfind("\n", 0, cursor_pos) + 1
    end = code.find("\n", cursor_pos)
    return code[start : len(code) if end < 0 else end], start
