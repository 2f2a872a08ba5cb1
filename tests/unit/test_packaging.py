"""Deployments install only what they run: the broker needs no Jupyter or web stack."""

from __future__ import annotations

import subprocess
import sys


def imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


def test_broker_imports_neither_jupyter_nor_the_web_stack():
    loaded = imported_by("rexec_broker.server")
    assert not loaded & {
        "IPython",
        "ipykernel",
        "jupyter_client",
        "fastapi",
        "uvicorn",
        "ipywidgets",
    }


def test_client_import_is_light():
    loaded = imported_by("rexec.client.session")
    assert not loaded & {"IPython", "ipykernel", "fastapi", "uvicorn"}
