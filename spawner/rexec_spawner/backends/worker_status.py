"""What a local worker reports in its status file, read as the untrusted input it is.

The worker writes ``status.json`` (its state, pid, versions, environment id); user code in the
worker can write anything there instead. :func:`read_status` therefore keeps only what has the
expected type and size: known fields are checked one by one, a few other short scalar fields
are kept for display, and everything else is dropped and named in ``problems`` (by field and
type, never by value) for the backend to log once. It never raises, and the info it returns is
bounded in size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rexec_spawner.backends.worker_files import UnreadableFile, read_worker_file

MAX_STATUS_BYTES = 16 * 1024
MAX_TEXT = 200
MAX_ERROR_TEXT = 2000
MAX_EXTRA_FIELDS = 16
# What the worker reports while it starts, serves and stops.
STATES = frozenset({"connecting", "registered", "restarting", "building", "stopping"})

PYTHON_MINOR = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}")
_PYTHON = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}[0-9A-Za-z.+-]{0,30}")
ENV_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EXTRA_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_INVALID = object()


def is_python_minor(value: object) -> bool:
    """True for a Python minor version such as ``"3.11"``."""
    return isinstance(value, str) and PYTHON_MINOR.fullmatch(value) is not None


@dataclass(frozen=True)
class StatusReport:
    """What could be used from one reading of the status file.

    ``readable`` is False when the file as a whole was refused (too large, not JSON...): the
    previous reading then still stands. ``problems`` maps a kind from a small fixed set (a known
    field name, ``"other"`` for other fields, ``"file"``, ``"encoding"``, ``"json"``, ``"shape"``
    for the whole file) to a description without the offending value.
    """

    readable: bool
    state: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def read_status(path: Path) -> StatusReport | None:
    """The worker's report in ``path``; None if there is no such file (not written yet)."""
    try:
        data = read_worker_file(path, MAX_STATUS_BYTES)
    except FileNotFoundError:
        return None
    except UnreadableFile as exc:
        return StatusReport(False, problems={"file": f"the whole file: {exc}"})
    except OSError as exc:
        return StatusReport(False, problems={"file": f"the whole file: {exc.strerror}"})
    return parse_status(data)


def parse_status(data: bytes) -> StatusReport:
    try:
        status = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return StatusReport(False, problems={"encoding": "the whole file: it is not UTF-8"})
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays exhaust the decoder's stack before any limit.
        return StatusReport(False, problems={"json": "the whole file: it is not JSON"})
    if not isinstance(status, dict):
        return StatusReport(False, problems={"shape": "the whole file: it is not a JSON object"})
    problems: dict[str, str] = {}
    state = status.pop("state", None)
    if state is not None and not (isinstance(state, str) and state in STATES):
        problems["state"] = (
            f"field state: {_describe(state)}, not one of {', '.join(sorted(STATES))}"
        )
        state = None
    info: dict[str, Any] = {}
    extra = ignored = 0
    for key, value in status.items():
        check = FIELDS.get(key)
        if check is not None:
            clean = check(value)
            if clean is _INVALID:
                problems[key] = f"field {key}: {_describe(value)}"
            else:
                info[key] = clean
        elif extra < MAX_EXTRA_FIELDS and _EXTRA_KEY.fullmatch(key) and _is_short_scalar(value):
            info[key] = value
            extra += 1
        else:
            ignored += 1
    if ignored:
        problems["other"] = (
            f"{ignored} other field(s): only {MAX_EXTRA_FIELDS} short scalar fields are kept"
        )
    return StatusReport(True, state, info, problems)


def _text(limit: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return value if isinstance(value, str) and len(value) <= limit else _INVALID

    return check


def _matching(pattern: re.Pattern[str]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return value if isinstance(value, str) and pattern.fullmatch(value) else _INVALID

    return check


def _count(maximum: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
        return value if ok else _INVALID

    return check


def _timestamp(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _INVALID
    return value if math.isfinite(value) and 0 <= value < 1e11 else _INVALID


def _optional_text(value: Any) -> Any:
    return None if value is None else _text(MAX_TEXT)(value)


FIELDS: dict[str, Callable[[Any], Any]] = {
    "pid": _count(2**31),
    "protocol": _count(10**6),
    "updated": _timestamp,
    "python": _matching(_PYTHON),
    "python_minor": _matching(PYTHON_MINOR),
    "implementation": _text(MAX_TEXT),
    "host": _text(MAX_TEXT),
    "rexec": _text(MAX_TEXT),
    "dill": _text(MAX_TEXT),
    "cloudpickle": _text(MAX_TEXT),
    "env_id": _matching(ENV_ID),
    "env_error": _text(MAX_ERROR_TEXT),
    "user": _optional_text,
}


def _is_short_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _describe(value: Any) -> str:
    """The type of ``value`` (and the length of a string), never the value itself."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"
