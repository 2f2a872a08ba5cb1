"""Building the JupyterLab extension during ``pip install`` (see pyproject.toml).

hatch-jupyter-builder calls :func:`build_extension`, which runs ``jlpm install`` (immutable:
the committed yarn.lock decides every version) and ``jlpm build:prod`` into
``labextension/dist``, shipped as ``share/jupyter/labextensions/rexec-jupyterlab``. It does
nothing when the build is newer than every source, and :class:`LabextensionRequirements` asks
for JupyterLab (which brings ``jlpm``) in the build environment only when a build is due, so
reinstalling a built checkout (``scripts/test`` does it each run) stays quick.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

JUPYTERLAB = "jupyterlab>=4.6,<5"
SOURCES = ("src", "style", "package.json", "yarn.lock", "tsconfig.json")
EXTENSION = Path(__file__).resolve().parent


def needs_build(extension: Path) -> bool:
    """True if ``extension/dist`` is missing or older than any of its sources."""
    built = extension / "dist" / "package.json"
    if not built.exists():
        return True
    cutoff = built.stat().st_mtime
    for name in SOURCES:
        source = extension / name
        paths = source.rglob("*") if source.is_dir() else [source]
        if any(path.is_file() and path.stat().st_mtime > cutoff for path in paths):
            return True
    return False


class LabextensionRequirements(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return [JUPYTERLAB] if needs_build(Path(self.root) / "labextension") else []


def build_extension(target_name: str, version: str) -> None:
    """Build ``labextension/dist`` if it is missing or stale (hatch-jupyter-builder's hook)."""
    if not needs_build(EXTENSION):
        return
    jlpm = shutil.which("jlpm")
    if jlpm is None:
        raise RuntimeError(
            "building the JupyterLab extension needs jlpm, which comes with JupyterLab: "
            f"`pip install '{JUPYTERLAB}'` (or set SKIP_JUPYTER_BUILDER=1 to skip the extension)"
        )
    for step in (["install", "--immutable"], ["build:prod"]):
        subprocess.run([jlpm, *step], cwd=EXTENSION, check=True)
