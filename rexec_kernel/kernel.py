"""The "Rexec (remote)" Jupyter kernel: every cell runs on the user's Rexec worker.

A thin adapter from the Jupyter messaging protocol to ``rexec.client.session.Session``:
``execute`` runs the cell in the worker's persistent IPython namespace and relays its outputs to
IOPub verbatim; ``complete`` and ``inspect`` ask the worker; ``is_complete`` is answered here
(pure parsing). Interrupting the kernel (SIGINT) makes the session cancel the remote cell, whose
namespace survives. A restart deletes the worker, so the new kernel gets a fresh namespace.

Settings (traitlets, e.g. ``--RexecKernel.cell_timeout=600`` in the kernelspec's argv, or the
environment variables named in each ``help``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from ipykernel.kernelbase import Kernel
from traitlets import Enum, Float

from rexec import __version__
from rexec.client.session import Session
from rexec.errors import RexecError, WorkerDied
from rexec.profile import load_profile
from rexec_kernel.history import CellHistory
from rexec_kernel.link import Progress, WorkerLink
from rexec_kernel.relay import IopubRelay, make_error_content
from rexec_kernel.status_comm import start_kernel_status

LOST_STATE_HINT = "The next cell starts a new worker; variables and imports of this one are lost."
INTERRUPTED = "the cell was interrupted; the remote namespace is kept"


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


class RexecKernel(Kernel):
    """Runs every cell on the Rexec worker found through the connection profile."""

    implementation = "rexec"
    implementation_version = __version__
    banner = "Rexec (remote): cells run on your Rexec worker"

    cell_timeout = Float(
        _env_float("REXEC_CELL_TIMEOUT"),
        allow_none=True,
        config=True,
        help="Seconds a cell may run before it is cancelled (REXEC_CELL_TIMEOUT; default none).",
    )
    kernel_info_wait = Float(
        10.0,
        config=True,
        help="Seconds kernel_info waits for the worker, to report its Python version.",
    )
    worker_on_shutdown = Enum(
        ["keep", "delete"],
        os.environ.get("REXEC_KERNEL_ON_SHUTDOWN", "keep"),
        config=True,
        help="On shutdown (not restart): keep the worker for later sessions (the spawner culls "
        "idle ones) or delete it (REXEC_KERNEL_ON_SHUTDOWN).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link = WorkerLink(_make_session)
        self._history = CellHistory()
        self._status = start_kernel_status(self, self._link)

    def start(self) -> None:
        super().start()
        self._link.start()

    # -- kernel_info -------------------------------------------------------------------------

    @property
    def language_info(self) -> dict[str, Any]:  # type: ignore[override]
        info = self._link.worker_info() or {}
        return {
            "name": "python",
            "version": str(info.get("python") or platform.python_version()),
            "mimetype": "text/x-python",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "pygments_lexer": "ipython3",
            "nbconvert_exporter": "python",
            "file_extension": ".py",
        }

    @property
    def kernel_info(self) -> dict[str, Any]:
        self._link.wait(self.kernel_info_wait)
        info = dict(super().kernel_info)
        info["supported_features"] = []
        return info

    # -- execute -----------------------------------------------------------------------------

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        parent = self.get_parent("shell")

        def send(msg_type: str, content: dict[str, Any]) -> None:
            if not silent and self.session is not None:
                self.session.send(
                    self.iopub_socket, msg_type, content, parent, ident=self._topic(msg_type)
                )

        relay = IopubRelay(send)

        def show_progress(message: str) -> None:
            send("stream", {"name": "stderr", "text": f"rexec: {message}\n"})

        with self._link.live(show_progress), self._status.activity():
            try:
                session = self._link.session()
                reply = session.execute(
                    code,
                    silent=silent,
                    store_history=store_history,
                    timeout=self.cell_timeout,
                    output=relay,
                    user_expressions=user_expressions or None,
                )
            except KeyboardInterrupt:
                return self._failed(relay, send, "KeyboardInterrupt", INTERRUPTED)
            except WorkerDied as exc:
                return self._failed(relay, send, "WorkerDied", str(exc), LOST_STATE_HINT)
            except RexecError as exc:
                return self._failed(relay, send, type(exc).__name__, str(exc))
            except Exception as exc:
                # Never leave the frontend without a reply: report the failure as the cell's.
                self.log.exception("the Rexec kernel failed to run a cell")
                message = f"{exc}; this is a bug in the Rexec kernel, please report it"
                return self._failed(relay, send, type(exc).__name__, message)
        count = reply.get("execution_count")
        if isinstance(count, int):
            self.execution_count = count
            if store_history and not silent:
                self._history.add(count, code)
        reply.setdefault("user_expressions", {})
        reply.setdefault("payload", [])
        if reply.get("status") == "aborted":
            # Cancelled remotely (e.g. a cell timeout): Jupyter clients expect an error here.
            return self._failed(relay, send, "KeyboardInterrupt", INTERRUPTED)
        return reply

    def _failed(
        self,
        relay: IopubRelay,
        send: Any,
        ename: str,
        evalue: str,
        hint: str | None = None,
    ) -> dict[str, Any]:
        content = make_error_content(ename, evalue, hint)
        if not relay.saw_error or ename != "KeyboardInterrupt":
            send("error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    # -- introspection -----------------------------------------------------------------------

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        cursor = len(code) if cursor_pos is None else cursor_pos
        empty = {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor,
            "cursor_end": cursor,
            "metadata": {},
        }
        session = self._link.ready_session()
        if session is None:
            return empty
        try:
            return session.complete(code, cursor)
        except RexecError:
            return empty

    async def do_inspect(
        self, code: str, cursor_pos: int | None, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        session = self._link.ready_session()
        if session is not None:
            try:
                return session.inspect(code, cursor_pos, detail_level)
            except RexecError:
                pass
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        from IPython.core.inputtransformer2 import TransformerManager

        status, indent = TransformerManager().check_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    async def do_history(
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
    ) -> dict[str, Any]:
        if hist_access_type == "tail":
            entries = self._history.tail(n)
        elif hist_access_type == "range":
            entries = self._history.range(start, stop)
        elif hist_access_type == "search":
            entries = self._history.search(pattern, n, unique)
        else:
            entries = []
        history: list[Any] = [
            (s, line, (src, None)) if output else (s, line, src) for s, line, src in entries
        ]
        return {"status": "ok", "history": history}

    # -- shutdown ----------------------------------------------------------------------------

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self._status.close()
        session = self._link.close()
        if session is not None:
            try:
                if restart or self.worker_on_shutdown == "delete":
                    session.delete_worker()
            except RexecError as exc:
                self.log.warning("could not delete the worker: %s", exc)
            finally:
                session.close()
        return {"status": "ok", "restart": restart}


def _make_session(progress: Progress) -> Session:
    return Session(load_profile(), progress=progress)
