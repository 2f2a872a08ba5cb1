"""Comparing the client's interpreter with the worker's, before the first call.

What can break shipping functions: a different Python minor version (bytecode differs; loading it
can crash the other interpreter), different dill or cloudpickle versions, a different Rexec
protocol. Each difference becomes a message naming both sides and the fix. Cells travel as source
and work across versions; with a different Python, functions are shipped as source too
(:func:`ships_source`), and what cannot be (lambdas, closures) fails with that message.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from rexec import __version__
from rexec import protocol as p
from rexec.serialization import serializer_versions


def local_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "python_minor": "{}.{}".format(*sys.version_info[:2]),
        **serializer_versions(),
        "protocol": p.PROTOCOL_VERSION,
        "rexec": __version__,
    }


def ships_source(worker: dict[str, Any] | None, local: dict[str, Any] | None = None) -> bool:
    """True when functions must travel as source: the worker runs another Python minor."""
    theirs = (worker or {}).get("python_minor")
    return bool(theirs) and theirs != (local or local_info())["python_minor"]


def check_skew(worker: dict[str, Any], local: dict[str, Any] | None = None) -> list[str]:
    """Human-readable differences that can break shipping functions, with the fix for each."""
    mine = local or local_info()
    problems = []
    theirs_py, ours_py = worker.get("python_minor"), mine["python_minor"]
    if theirs_py and theirs_py != ours_py:
        problems.append(
            f"the worker runs Python {theirs_py}, your notebook {ours_py}: bytecode does not "
            "travel between Python versions, so functions are shipped as source (lambdas, "
            "closures and values holding functions cannot be). Cells work as usual. To ship "
            f"anything, use a worker with Python {ours_py} or a notebook with Python {theirs_py}"
        )
    for package in ("dill", "cloudpickle"):
        theirs, ours = worker.get(package), mine.get(package)
        if theirs and ours and theirs != ours:
            problems.append(
                f"the worker has {package} {theirs}, your notebook {package} {ours}: install the "
                f"same version on both sides (pip install {package}=={ours})"
            )
    if worker.get("env_error"):
        problems.append(
            f"the worker is not in the environment set for it: {worker['env_error']}. Set one "
            "that installs (%rexec_env / set_environment) or go back with %rexec_env --reset"
        )
    theirs_proto = worker.get("protocol")
    if theirs_proto is not None and theirs_proto != mine["protocol"]:
        problems.append(
            f"the worker speaks Rexec protocol {theirs_proto}, this client {mine['protocol']}: "
            "install the same rexec version on both sides"
        )
    return problems
