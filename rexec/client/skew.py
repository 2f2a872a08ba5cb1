"""Comparing the client's interpreter with the worker's, before the first call."""

from __future__ import annotations

import platform
import sys
from typing import Any

import dill

from rexec import __version__
from rexec import protocol as p


def local_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "python_minor": "{}.{}".format(*sys.version_info[:2]),
        "dill": dill.__version__,
        "protocol": p.PROTOCOL_VERSION,
        "rexec": __version__,
    }


def check_skew(worker: dict[str, Any], local: dict[str, Any] | None = None) -> list[str]:
    """Human-readable differences that can break shipping functions, with the fix for each."""
    mine = local or local_info()
    problems = []
    theirs_py, ours_py = worker.get("python_minor"), mine["python_minor"]
    if theirs_py and theirs_py != ours_py:
        problems.append(
            f"the worker runs Python {theirs_py}, your notebook {ours_py}: functions are shipped "
            f"as bytecode and may fail to load. Use a worker image with Python {ours_py}, or run "
            "cells (%%rexec) instead of functions"
        )
    theirs_dill, ours_dill = worker.get("dill"), mine["dill"]
    if theirs_dill and theirs_dill != ours_dill:
        problems.append(
            f"the worker has dill {theirs_dill}, your notebook dill {ours_dill}: install the same "
            f"version on both sides (pip install dill=={ours_dill})"
        )
    theirs_proto = worker.get("protocol")
    if theirs_proto is not None and theirs_proto != mine["protocol"]:
        problems.append(
            f"the worker speaks Rexec protocol {theirs_proto}, this client {mine['protocol']}: "
            "install the same rexec version on both sides"
        )
    return problems
