"""Functions that run *on the worker* to copy names into and out of its cell namespace.

They are shipped by reference (this module is part of the ``rexec`` distribution the worker
runs) and import nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any


def _user_ns() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("the worker has no cell namespace (no IPython shell is running)")
    namespace: dict[str, Any] = shell.user_ns
    return namespace


def assign_names(values: dict[str, Any]) -> list[str]:
    """Set ``values`` in the worker's cell namespace; return the names set."""
    _user_ns().update(values)
    return sorted(values)


def fetch_names(names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The values of ``names`` in the worker's cell namespace, and the names it lacks."""
    namespace = _user_ns()
    found = {name: namespace[name] for name in names if name in namespace}
    return found, [name for name in names if name not in namespace]
