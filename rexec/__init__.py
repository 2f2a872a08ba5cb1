"""Rexec: run Jupyter cells and Python functions on a dedicated remote worker.

>>> from rexec import remote_func
>>> @remote_func
... def where():
...     import os
...     return os.getpid()
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "RemoteError",
    "RexecError",
    "Session",
    "__version__",
    "connect",
    "remote_func",
]


def connect(**overrides: Any) -> Any:
    """Open a session: the profile and environment, overridden by ``spawner_url=``, ``token=``,
    ``broker_url=``, ``broker_public_key=``, ``worker=``. Use it as a context manager."""
    from rexec.client.session import Session
    from rexec.profile import load_profile

    return Session(load_profile(**overrides)).connect()


def __getattr__(name: str) -> Any:
    # Lazy so that ``import rexec`` stays light for the broker and the worker.
    if name == "remote_func":
        from rexec.client.remote import remote_func

        return remote_func
    if name == "Session":
        from rexec.client.session import Session

        return Session
    if name in ("RexecError", "RemoteError"):
        from rexec import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'rexec' has no attribute {name!r}")
