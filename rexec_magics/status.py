"""The status-bar channel of a kernel that loaded the magics (``rexec.status`` comm).

``%load_ext rexec_magics`` starts it in a Jupyter kernel (nothing happens in a terminal
IPython): it registers the comm target and opens a comm to JupyterLab, which shows the worker
of the default session — the one ``%%rexec`` and ``@remote_func`` use. ``%%rexec`` and
``%rexec_env`` mark themselves busy through :func:`tracks_activity`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from rexec.errors import RexecError
from rexec_kernel.status import StatusTracker
from rexec_kernel.status_comm import SessionState, StatusChannel, attach_comm_manager

F = TypeVar("F", bound=Callable[..., Any])

_channel: StatusChannel | None = None


def _default_session_state() -> SessionState:
    from rexec.client.remote import default_session

    try:
        return SessionState(default_session())
    except RexecError as exc:
        return SessionState(None, error=str(exc))


def start_status(ipython: Any) -> StatusChannel | None:
    """Start (once per process) the status channel of the IPython kernel behind ``ipython``."""
    global _channel
    kernel = getattr(ipython, "kernel", None)
    if kernel is None or getattr(kernel, "session", None) is None:
        return None
    if _channel is None:
        tracker = StatusTracker(os.environ.get("REXEC_WORKER") or "default", source="magics")
        channel = StatusChannel(
            kernel, attach_comm_manager(kernel), tracker, _default_session_state
        )
        channel.register()
        _channel = channel
    _channel.open_from_kernel()
    return _channel


def tracks_activity(fn: F) -> F:
    """Shows the worker as busy in the status bar while the decorated magic runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        channel = _channel
        with channel.activity() if channel is not None else contextlib.nullcontext():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
