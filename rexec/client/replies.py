"""Turning a terminal reply into a value or the right exception."""

from __future__ import annotations

import pickle
from typing import Any

import zmq

from rexec import protocol as p
from rexec import serialization as ser
from rexec.errors import (
    AuthError,
    AuthUnavailable,
    CallCancelled,
    ConnectionLost,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    RexecError,
    WorkerDied,
    WorkerUnavailable,
)

_BY_CODE: dict[str, type[RexecError]] = {
    p.E_WORKER_DIED: WorkerDied,
    p.E_NO_WORKER: WorkerUnavailable,
    p.E_TOO_LARGE: PayloadTooLarge,
    p.E_AUTH_FAILED: AuthError,
    p.E_FORBIDDEN: AuthError,
    p.E_AUTH_UNAVAILABLE: AuthUnavailable,
    p.E_UNAUTHENTICATED: AuthError,
    p.E_BAD_MESSAGE: ProtocolError,
    p.E_PROTOCOL_VERSION: ProtocolError,
    "_lost": ConnectionLost,
}


def raise_for_reply(header: dict[str, Any], payload: list[zmq.Frame]) -> None:
    """Return if ``header`` is a successful reply; raise the matching exception otherwise."""
    status = header.get("status")
    if header.get("t") == p.REPLY and status == p.STATUS_OK:
        return
    if status == p.STATUS_CANCELLED:
        raise CallCancelled("the request was cancelled on the worker")
    if header.get("kind") == p.E_EXCEPTION and payload:
        raise rebuild_exception(payload)
    error = header.get("error") or {}
    code = str(error.get("code", ""))
    message = str(error.get("message") or f"request failed ({code or 'no reason given'})")
    raise _BY_CODE.get(code, RexecError)(message)


def rebuild_exception(payload: list[zmq.Frame]) -> BaseException:
    """The remote exception with its own type if importable here, else a ``RemoteError``."""
    content = p.parse_json_frame(payload[0])
    lines = [str(line) for line in content.get("traceback", [])]
    pickled = payload[1].bytes if len(payload) > 1 else b""
    if pickled:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback("".join(lines))
            return exc
    return RemoteError(
        str(content.get("ename", "Exception")), str(content.get("evalue", "")), lines
    )


def load_value(header: dict[str, Any], payload: list[zmq.Frame]) -> Any:
    return ser.loads_frames(header.get("ser", ser.SER_PICKLE), payload, int(header.get("nb") or 0))


def result_of(header: dict[str, Any], payload: list[zmq.Frame]) -> Any:
    raise_for_reply(header, payload)
    return load_value(header, payload)


def cell_reply(header: dict[str, Any], payload: list[zmq.Frame]) -> dict[str, Any]:
    if header.get("t") == p.REPLY and payload and "error" not in header:
        return dict(p.parse_json_frame(payload[0]))
    raise_for_reply(header, payload)
    return dict(p.parse_json_frame(payload[0]))


def refusal_error(error: dict[str, Any]) -> Exception:
    code, message = error.get("code"), error.get("message", "refused")
    if code == p.E_AUTH_UNAVAILABLE:
        return AuthUnavailable(message)
    if code in (p.E_AUTH_FAILED, p.E_FORBIDDEN):
        return AuthError(message)
    return ConnectionLost(f"the broker refused the session: {message}")
