"""The Rexec wire protocol: message types, header frames and frame layout.

This module is pure: it builds and parses frames and never touches a socket. The client, the
broker and the worker all import it; ``docs/protocol.md`` describes the same layout for humans.

Every message a peer sends is a ZeroMQ multipart message::

    [header, payload_0, payload_1, ...]

``header`` is a small UTF-8 JSON object (at most ``MAX_HEADER_BYTES``) with the protocol version
``v``, the message type ``t`` and type-specific fields. The broker reads only the header; payload
frames are opaque to it and are forwarded without being copied or deserialized.

Between broker and worker one extra frame, the *route tag*, stands before the header:
``[tag, header, payload...]``. The broker puts the requesting client's connection tag there, the
worker echoes it on every message about that request, and the broker forwards a worker message
only if the tag and request id match a request it sent to that very worker. Connection-level
messages (register, ping, pong...) carry an empty tag.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import orjson

from rexec.errors import ProtocolError

PROTOCOL_VERSION: Final = 2
MAX_HEADER_BYTES: Final = 16 * 1024
MAX_ID_LENGTH: Final = 64
# What a worker may report about itself (its ``info`` at registration, its ping ``stats``): the
# broker keeps it and repeats it in welcomes, so it must leave room in a header for the rest.
MAX_INFO_BYTES: Final = 4 * 1024
MAX_INFO_KEYS: Final = 32
MAX_INFO_TEXT: Final = 1024
# Requests one client connection may have in flight at the broker. Clients keep any beyond it
# waiting on their side, so a caller may start more without being refused.
MAX_INFLIGHT_PER_CLIENT: Final = 10_000
# Bytes the broker sends a peer beyond what the peer has reported read (``credit``); the broker
# announces its own value in ``welcome``/``registered``. Peers report every quarter window.
DEFAULT_WINDOW: Final = 16 * 1024 * 1024

# Connection-level messages, between a peer and the broker itself.
HELLO: Final = "hello"  # client -> broker: authenticate with a token, choose a worker name
WELCOME: Final = "welcome"  # broker -> client: authenticated as ``user``; current worker info
REGISTER: Final = "register"  # worker -> broker: present the spawner-issued credential
REGISTERED: Final = "registered"  # broker -> worker: accepted for ``user``/``worker``
REFUSED: Final = "refused"  # broker -> peer: connection-level error ``code``/``message``
PING: Final = "ping"  # peer -> broker, app-level liveness of the broker and of the session
PONG: Final = "pong"  # broker -> peer
PROBE: Final = "probe"  # broker -> peer, checks that a connection still exists; ignored
WORKER_STATE: Final = "worker_state"  # broker -> client: the worker came online or went away
ACTIVITY: Final = "activity"  # spawner -> broker frontend: which workers are busy (service cred.)
ACTIVITY_REPLY: Final = "activity_reply"  # broker -> spawner: one JSON payload frame of workers
CREDIT: Final = "credit"  # peer -> broker: ``n`` bytes read from the broker so far, in all
REVOKE: Final = "revoke"  # spawner -> broker frontend: a deleted worker instance (service cred.)
REVOKE_REPLY: Final = "revoke_reply"  # broker -> spawner

# Request-level messages, routed between a client and its own user's worker.
REQUEST: Final = "request"  # client -> worker: start request ``id`` with operation ``op``
NEXT: Final = "next"  # client -> worker: advance the generator of request ``id``
CANCEL: Final = "cancel"  # client -> worker: interrupt request ``id``
OUTPUT: Final = "output"  # worker -> client: Jupyter output content (stream, display_data...)
ITEM: Final = "item"  # worker -> client: a generator item, or the start marker of a generator
FLOW: Final = "flow"  # broker -> worker: ``pause`` (or resume) the output of request ``id``
REPLY: Final = "reply"  # worker or broker -> client: the terminal message of request ``id``

CLIENT_TO_BROKER: Final = frozenset({HELLO, PING, CREDIT, REQUEST, NEXT, CANCEL, ACTIVITY, REVOKE})
WORKER_TO_BROKER: Final = frozenset({REGISTER, PING, CREDIT, OUTPUT, ITEM, REPLY})
ROUTED_REQUEST_FOLLOWUPS: Final = frozenset({NEXT, CANCEL})

# Request operations (the ``op`` of a REQUEST). The broker does not look at them.
OP_CALL: Final = "call"  # run a function: payload = [function?] + packed (args, kwargs)
OP_EXECUTE: Final = "execute"  # run a cell: payload = [source code]
OP_COMPLETE: Final = "complete"  # complete code at a cursor: payload = [json content]
OP_INSPECT: Final = "inspect"  # inspect an object at a cursor: payload = [json content]
OP_ENVIRONMENT: Final = "environment"  # switch the worker's environment: payload = [json spec]

# Reply statuses.
STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_CANCELLED: Final = "cancelled"

# Error codes carried in ``error.code`` of a REPLY or REFUSED sent by the broker or the worker.
E_UNAUTHENTICATED: Final = "unauthenticated"
E_AUTH_FAILED: Final = "auth_failed"
E_AUTH_UNAVAILABLE: Final = "auth_unavailable"
E_FORBIDDEN: Final = "forbidden"
E_BAD_MESSAGE: Final = "bad_message"
E_PROTOCOL_VERSION: Final = "protocol_version"
E_TOO_LARGE: Final = "too_large"
E_NO_WORKER: Final = "no_worker"
E_WORKER_DIED: Final = "worker_died"
E_BUSY: Final = "busy"
E_UNKNOWN_FUNCTION: Final = "unknown_function"
E_UNKNOWN_REQUEST: Final = "unknown_request"
E_DESERIALIZE: Final = "deserialize"
E_EXCEPTION: Final = "exception"
E_REPLACED: Final = "replaced"
E_ENVIRONMENT: Final = "environment"  # the requested environment could not be built

NO_TAG: Final = b""
WORKER_NAME_PATTERN: Final = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
_WORKER_NAME_RE = re.compile(WORKER_NAME_PATTERN)

# Payload content (Jupyter outputs and the like) may hold anything: the standard encoder, built
# once (json.dumps with options builds a new encoder on every call), with ``str`` for the rest.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _encode_header(header: dict[str, Any]) -> bytes:
    """Headers are small dicts of plain values: orjson, several times faster than ``json``."""
    try:
        return orjson.dumps(header, default=str)
    except TypeError:  # an integer beyond 64 bits, a non-string key: the standard encoder
        return _encode(header).encode()


def _loads(frame: bytes | memoryview) -> Any:
    """Parse JSON with orjson; what it refuses (NaN, integers beyond 64 bits, which the standard
    encoder writes) goes to ``json.loads``, which also gives the error message."""
    try:
        return _orjson_loads(frame)
    except ValueError:
        return json.loads(bytes(frame))


_orjson_loads = orjson.loads


_ID_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_ID_LENGTH}}}")
_match_id = _ID_RE.fullmatch
_NO_ID: Final = object()


def make_header(msg_type: str, **fields: Any) -> bytes:
    """Build a header frame. ``None`` fields are left out."""
    header = {"v": PROTOCOL_VERSION, "t": msg_type}
    for key, value in fields.items():
        if value is not None:
            header[key] = value
    data = _encode_header(header)
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"a {msg_type!r} header is {len(data)} bytes, over the {MAX_HEADER_BYTES}-byte limit; "
            "large data belongs in payload frames"
        )
    return data


def parse_header(
    frame: bytes | memoryview, allowed: frozenset[str] | None = None
) -> dict[str, Any]:
    """Parse and validate a header frame without trusting anything in it.

    Raises ``ProtocolError`` with a short reason for anything malformed: too large, not JSON, not
    an object, wrong version, unknown type, or a bad request id. Every message crosses this
    function once per process, so the usual case is kept to a few C calls.
    """
    size = len(frame)
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = _loads(frame)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError("header is not UTF-8 JSON") from exc
    if type(header) is not dict:
        raise ProtocolError("header is not a JSON object")
    version = header.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(
            f"protocol version {version!r} is not supported; this side speaks {PROTOCOL_VERSION}. "
            "Install the same rexec version on both sides"
        )
    msg_type = header.get("t")
    if type(msg_type) is not str or (allowed is not None and msg_type not in allowed):
        raise ProtocolError(f"unexpected message type {msg_type!r}")
    request_id = header.get("id", _NO_ID)
    if request_id is not _NO_ID and (type(request_id) is not str or not _match_id(request_id)):
        raise ProtocolError("request id must be 1-64 characters of [A-Za-z0-9_.:-]")
    return header


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _match_id(value) is not None


def valid_worker_name(value: object) -> bool:
    return isinstance(value, str) and _WORKER_NAME_RE.fullmatch(value) is not None


def check_worker_info(info: object, what: str = "worker info") -> dict[str, Any]:
    """``info`` if it is a small flat object of plain values; ``ProtocolError`` saying what is
    wrong otherwise.

    Keys are short strings; values are None, booleans, integers within 2**53, finite floats,
    strings of at most ``MAX_INFO_TEXT`` characters, or lists of at most ``MAX_INFO_KEYS`` such
    scalars; the whole encodes to at most ``MAX_INFO_BYTES``.
    """
    if type(info) is not dict:
        raise ProtocolError(f"{what} must be a JSON object")
    if len(info) > MAX_INFO_KEYS:
        raise ProtocolError(f"{what} has {len(info)} keys, more than {MAX_INFO_KEYS}")
    for key, value in info.items():
        if type(key) is not str or not 0 < len(key) <= MAX_ID_LENGTH:
            raise ProtocolError(f"{what} keys must be strings of 1-{MAX_ID_LENGTH} characters")
        if type(value) is list:
            if len(value) > MAX_INFO_KEYS or not all(map(_plain_value, value)):
                raise ProtocolError(f"{what}[{key!r}] must be a short list of plain values")
        elif not _plain_value(value):
            raise ProtocolError(f"{what}[{key!r}] must be a plain value (number, text, bool)")
    size = len(_encode_header(info))
    if size > MAX_INFO_BYTES:
        raise ProtocolError(f"{what} is {size} bytes encoded, over the {MAX_INFO_BYTES}-byte limit")
    return info


_SCALARS: Final = (str, int, float, bool, type(None))


def _plain_value(value: object) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= MAX_INFO_TEXT  # type: ignore[arg-type]
    if kind is int:
        return -(2**53) <= value <= 2**53  # type: ignore[operator]
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return kind is bool or value is None


def error_info(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


# -- builders for each message type -----------------------------------------------------------


def make_hello(token: str, worker: str, info: dict[str, Any]) -> list[bytes]:
    return [make_header(HELLO, token=token, worker=worker, info=info)]


def make_welcome(
    user: str,
    worker: str,
    worker_info: dict[str, Any] | None,
    max_message_bytes: int,
    max_in_flight: int = MAX_INFLIGHT_PER_CLIENT,
    window: int = DEFAULT_WINDOW,
) -> list[bytes]:
    return [
        make_header(
            WELCOME,
            user=user,
            worker=worker,
            worker_info=worker_info,
            max_bytes=max_message_bytes,
            max_in_flight=max_in_flight,
            window=window,
        )
    ]


def make_register(credential: str, info: dict[str, Any]) -> list[bytes]:
    return [make_header(REGISTER, credential=credential, info=info)]


def make_registered(
    user: str, worker: str, max_message_bytes: int, window: int = DEFAULT_WINDOW
) -> list[bytes]:
    return [
        make_header(
            REGISTERED, user=user, worker=worker, max_bytes=max_message_bytes, window=window
        )
    ]


def make_refused(code: str, message: str) -> list[bytes]:
    return [make_header(REFUSED, error=error_info(code, message))]


def make_ping(stats: dict[str, Any] | None = None) -> list[bytes]:
    return [make_header(PING, stats=stats)]


def make_pong() -> list[bytes]:
    return [make_header(PONG)]


def make_probe() -> list[bytes]:
    return [make_header(PROBE)]


def make_credit(received: int) -> list[bytes]:
    """``received``: bytes of the broker's messages this peer has read and is done with, in all
    since it connected (every frame counts)."""
    return [make_header(CREDIT, n=received)]


def make_flow(request_id: str, pause: bool) -> list[bytes]:
    return [make_header(FLOW, id=request_id, pause=pause)]


def make_worker_state(state: str, worker: str, info: dict[str, Any] | None) -> list[bytes]:
    return [make_header(WORKER_STATE, state=state, worker=worker, worker_info=info)]


def make_activity_query(request_id: str, credential: str, user: str | None = None) -> list[bytes]:
    """Ask the broker for its workers' activity (all of them, or those of ``user``)."""
    return [make_header(ACTIVITY, id=request_id, credential=credential, user=user)]


def make_activity_reply(
    request_id: str, workers: list[dict[str, Any]] | None, error: dict[str, str] | None = None
) -> list[bytes]:
    """The answer to ``make_activity_query``: the worker list as a JSON frame, or ``error``."""
    if error is not None:
        return [make_header(ACTIVITY_REPLY, id=request_id, status=STATUS_ERROR, error=error)]
    return [make_header(ACTIVITY_REPLY, id=request_id, status=STATUS_OK), make_json_frame(workers)]


def make_revoke(
    request_id: str, credential: str, user: str, worker: str, instance: str, until: float | None
) -> list[bytes]:
    """Tell the broker that worker ``instance`` of ``user`` is gone: refuse its credential (whose
    expiry is ``until``) from now on, and drop it if it is registered."""
    return [
        make_header(
            REVOKE,
            id=request_id,
            credential=credential,
            user=user,
            worker=worker,
            instance=instance,
            until=until,
        )
    ]


def make_revoke_reply(request_id: str, error: dict[str, str] | None = None) -> list[bytes]:
    status = STATUS_OK if error is None else STATUS_ERROR
    return [make_header(REVOKE_REPLY, id=request_id, status=status, error=error)]


def make_request(request_id: str, op: str, payload: Sequence[Any] = (), **fields: Any) -> list[Any]:
    return [make_header(REQUEST, id=request_id, op=op, **fields), *payload]


def make_call(
    request_id: str, fn_key: str, payload: Sequence[Any], *, inline: bool, ser: str, buffers: int
) -> list[Any]:
    """A ``call`` request, on the hot path: the header ``make_request`` would build, filled into
    a template. Every field comes from a restricted alphabet (a valid request id, a hex function
    key, a serializer name), so no JSON escaping is needed."""
    extra = (',"fn_inline":true' if inline else "") + (f',"nb":{buffers:d}' if buffers else "")
    header = _CALL_HEADER % (request_id, fn_key, extra, ser)
    return [header.encode(), *payload]


_CALL_HEADER: Final = (
    '{"v":' + str(PROTOCOL_VERSION) + ',"t":"' + REQUEST + '","id":"%s","op":"' + OP_CALL + '",'
    '"fn":"%s"%s,"ser":"%s"}'
)


def make_next(request_id: str) -> list[bytes]:
    return [make_header(NEXT, id=request_id)]


def make_cancel(request_id: str) -> list[bytes]:
    return [make_header(CANCEL, id=request_id)]


def make_output(request_id: str, msg_type: str, content: dict[str, Any]) -> list[bytes]:
    """An output with Jupyter message-spec ``content`` of type ``msg_type``.

    ``msg_type`` is one of stream, display_data, update_display_data, execute_result, error,
    clear_output. The content travels as a JSON payload frame so its size is not bounded by the
    header limit and the broker never parses it.
    """
    return [make_header(OUTPUT, id=request_id, mt=msg_type), make_json_frame(content)]


def make_item(request_id: str, payload: Sequence[Any] = (), **fields: Any) -> list[Any]:
    return [make_header(ITEM, id=request_id, **fields), *payload]


def make_reply(
    request_id: str, status: str, payload: Sequence[Any] = (), **fields: Any
) -> list[Any]:
    return [make_header(REPLY, id=request_id, status=status, **fields), *payload]


def make_result(request_id: str, frames: Sequence[Any], ser: str, buffers: int) -> list[Any]:
    """The ``ok`` reply of a call carrying its packed result, on the hot path: the header
    ``make_reply`` would build, filled into a template. ``request_id`` was validated when the
    request arrived and ``ser`` is a serializer name, so no JSON escaping is needed."""
    extra = f',"nb":{buffers:d}' if buffers else ""
    return [(_RESULT_HEADER % (request_id, ser, extra)).encode(), *frames]


_RESULT_HEADER: Final = (
    '{"v":' + str(PROTOCOL_VERSION) + ',"t":"' + REPLY + '","id":"%s",'
    '"status":"' + STATUS_OK + '","ser":"%s"%s}'
)


def make_error_reply(request_id: str, code: str, message: str) -> list[bytes]:
    """A terminal reply for a request that failed outside user code."""
    return [make_header(REPLY, id=request_id, status=STATUS_ERROR, error=error_info(code, message))]


def parse_json_frame(frame: Any) -> Any:
    """Decode a JSON payload frame (bytes, memoryview or zmq.Frame)."""
    try:
        return _loads(frame if isinstance(frame, bytes | memoryview) else memoryview(frame))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("payload frame is not UTF-8 JSON") from exc


def make_json_frame(content: Any) -> bytes:
    return _encode(content).encode()


_SIZED_BY_LEN: Final = (bytes, bytearray)


def message_size(frames: Sequence[Any]) -> int:
    """Total bytes of a multipart message (zmq.Frame, bytes or memoryview parts)."""
    total = 0
    for frame in frames:
        if isinstance(frame, _SIZED_BY_LEN) or hasattr(frame, "bytes"):
            total += len(frame)
        else:
            total += memoryview(frame).nbytes
    return total
