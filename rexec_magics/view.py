"""Where a ``%%rexec`` cell's output goes: a live widget, or plain output.

``LiveCellView`` shows a header (worker, state, elapsed time, updated while the cell runs)
over an ipywidgets ``Output`` whose ``outputs`` are kept in sync with the remote cell's
outputs; ``PlainOutput`` writes streams to this kernel's stdout/stderr and rich output through
IPython's display machinery (for scripts, nbconvert, ``--quiet``). Both are ``OutputHandler``s.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any

from rexec_magics.outputs import OutputList

SYNC_INTERVAL = 0.05
TICK_INTERVAL = 0.5


class LiveCellView:
    """A header plus an Output widget, updated live from the remote cell's outputs."""

    def __init__(self, worker: str, title: str = "rexec") -> None:
        import ipywidgets as widgets

        self.worker = worker
        self.title = title
        self.state = "starting"
        self.header = widgets.HTML()
        self.output = widgets.Output()
        self.box = widgets.VBox([self.header, self.output])
        self._outputs = OutputList()
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self._synced_at = 0.0
        self._dirty = False
        self._done = threading.Event()
        self._ticker: threading.Thread | None = None

    def show(self) -> None:
        """Display the widget and start updating its elapsed time."""
        from IPython.display import display

        self._render_header()
        display(self.box)
        self._ticker = threading.Thread(target=self._tick, name="rexec-view-tick", daemon=True)
        self._ticker.start()

    def set_state(self, state: str) -> None:
        with self._lock:
            self.state = state
            self._render_header()

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        with self._lock:
            if self.state == "starting":
                self.state = "running"
            self._outputs.apply(msg_type, content)
            self._dirty = True
            if time.monotonic() - self._synced_at >= SYNC_INTERVAL:
                self._sync()

    def finish(self, state: str) -> None:
        """Stop the clock and show the final outputs and ``state`` (done, failed...)."""
        self._done.set()
        if self._ticker is not None:
            self._ticker.join(2)
        with self._lock:
            self.state = state
            self._sync()
            self._render_header()

    def outputs(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._outputs.outputs()

    def _sync(self) -> None:
        self.output.outputs = tuple(self._outputs.outputs())
        self._synced_at = time.monotonic()
        self._dirty = False

    def _tick(self) -> None:
        while not self._done.wait(TICK_INTERVAL):
            with self._lock:
                if self._dirty:
                    self._sync()
                self._render_header()

    def _render_header(self) -> None:
        elapsed = time.monotonic() - self._started
        self.header.value = (
            f"<span style='font-family: monospace; font-size: 90%; opacity: 0.8'>"
            f"{html.escape(self.title)} · worker {html.escape(self.worker)} · "
            f"<b>{html.escape(self.state)}</b> · {elapsed:.1f} s</span>"
        )


class PlainOutput:
    """Streams to this process's stdout/stderr; rich output through IPython's display."""

    def handle(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            target = sys.stderr if content.get("name") == "stderr" else sys.stdout
            target.write(str(content.get("text", "")))
            target.flush()
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            from IPython.display import publish_display_data

            publish_display_data(
                content.get("data") or {},
                content.get("metadata") or {},
                transient=content.get("transient") or {},
                update=msg_type == "update_display_data",
            )
        elif msg_type == "clear_output":
            from IPython.display import clear_output

            clear_output(wait=bool(content.get("wait")))
        # errors are raised by the magic, with the remote traceback, once
