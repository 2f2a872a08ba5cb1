"""Installing packages into the worker from the client (``set_environment``).

Requirements are validated here (``rexec.requirements``) and again on the worker, then passed
to ``pip install`` as an argument list. The installer's output streams back like any output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rexec.client.outputs import OutputHandler
from rexec.client.session import Session
from rexec.errors import ConfigError, RexecError
from rexec.requirements import parse_requirements


def _install(requirements: list[str]) -> dict[str, Any]:
    """Runs on the worker: pip install with an argument list, streaming its output."""
    import subprocess
    import sys

    from rexec.requirements import parse_requirements

    checked = list(parse_requirements("\n".join(requirements)).requirements)
    if not checked:
        return {"installed": [], "returncode": 0}
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *checked]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="")
    return {"installed": checked, "returncode": process.wait()}


def install(
    session: Session, requirements: list[str], output: OutputHandler | None = None
) -> dict[str, Any]:
    """Install already-validated requirement strings into the worker; pip's output goes to
    ``output``. Returns ``{"installed": [...], "returncode": int}``."""
    return dict(session.call(_install, (requirements,), output=output))


def set_environment(
    session: Session, requirements_file: str | Path, output: OutputHandler | None = None
) -> dict[str, Any]:
    """Install the packages listed in ``requirements_file`` into the session's worker."""
    path = Path(requirements_file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    requirements = list(parse_requirements(text).requirements)
    result = install(session, requirements, output)
    if result["returncode"] != 0:
        raise RexecError(
            f"pip could not install {', '.join(requirements)} on the worker (exit code "
            f"{result['returncode']}); its output above says why. The worker keeps its "
            "previous packages"
        )
    return dict(result)
