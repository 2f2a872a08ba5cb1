"""Rexec magics for any IPython kernel: ``%load_ext rexec_magics``.

::

    In [1]: %load_ext rexec_magics

    In [2]: %%rexec
       ...: import socket
       ...: print(socket.gethostname())    # streams live from your worker

See ``rexec_magics.magics`` for every magic.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and the ``%%rexec`` completion matcher."""
    from rexec_magics.completion import rexec_matcher
    from rexec_magics.magics import RexecMagics
    from rexec_magics.status import start_status

    ipython.register_magics(RexecMagics)
    start_status(ipython)
    matchers = ipython.Completer.custom_matchers
    if rexec_matcher not in matchers:
        matchers.insert(0, rexec_matcher)


def unload_ipython_extension(ipython: Any) -> None:
    from rexec_magics.completion import rexec_matcher

    matchers = ipython.Completer.custom_matchers
    if rexec_matcher in matchers:
        matchers.remove(rexec_matcher)
