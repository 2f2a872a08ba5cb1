"""Tab completion of remote names inside ``%%rexec`` cells.

An IPython context matcher: when the cell starts with ``%%rexec`` and the cursor is in its
body, the completion request is forwarded to the worker, whose namespace knows the names.
It never starts a worker: with no connected session it defers to the other matchers.
"""

from __future__ import annotations

from typing import Any

from IPython.core.completer import CompletionContext, SimpleCompletion, context_matcher

COMPLETE_TIMEOUT = 2.0


def cell_body_position(full_text: str, cursor_line: int, cursor_column: int) -> tuple[str, int]:
    """The ``%%rexec`` cell's body and the cursor's offset in it, or ``("", -1)`` outside it.

    >>> cell_body_position("%%rexec\\nimport os\\nos.ge", 2, 5)
    ('import os\\nos.ge', 15)
    >>> cell_body_position("x = 1", 0, 3)
    ('', -1)
    """
    if not full_text.lstrip().startswith("%%rexec") or cursor_line < 1:
        return "", -1
    lines = full_text.split("\n")
    body = "\n".join(lines[1:])
    offset = sum(len(line) + 1 for line in lines[1:cursor_line]) + cursor_column
    return body, offset


def _connected_session() -> Any:
    from rexec.client.remote import defaults

    session = getattr(defaults, "_session", None)
    if session is None or not session.connected:
        return None
    return session


@context_matcher()
def rexec_matcher(context: CompletionContext) -> dict[str, Any]:
    """Completions from the worker for code inside a ``%%rexec`` cell."""
    body, offset = cell_body_position(
        context.full_text, context.cursor_line, context.cursor_position
    )
    session = _connected_session() if offset >= 0 else None
    if session is None:
        return {"completions": [], "suppress": False}
    try:
        reply = session.complete(body, offset, timeout=COMPLETE_TIMEOUT)
    except Exception:
        return {"completions": [], "suppress": False}
    start = int(reply.get("cursor_start", offset))
    completions = [SimpleCompletion(text=str(m)) for m in reply.get("matches") or []]
    return {
        "completions": completions,
        "matched_fragment": body[start:offset],
        "suppress": bool(completions),
    }
