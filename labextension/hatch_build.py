"""Building the JupyterLab extension during ``pip install`` (see pyproject.toml).

hatch-jupyter-builder calls :func:`build_extension`, which runs ``jlpm install`` (immutable:
the committed yarn.lock decides every version) and ``jlpm build:prod`` into
``labextension/dist``; :class:`LabextensionHook` then ships it as
``share/jupyter/labextensions/rexec-jupyterlab``. Nothing is built when the build is newer than
every source, and JupyterLab (which brings ``jlpm``) is asked for in the build environment only
when a build is due, so reinstalling a built checkout (``scripts/test`` does it each run) stays
quick. Without Node.js an editable install goes on without the extension (a warning says so),
so ``pip install -e ".[local]"`` works on a machine with no JupyterLab in sight; a wheel
(``ensured-targets``) always has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

JUPYTERLAB = "jupyterlab>=4.6,<5"
SOURCES = ("src", "style", "package.json", "yarn.lock", "tsconfig.json")
EXTENSION = Path(__file__).resolve().parent
LABEXTENSIONS = "share/jupyter/labextensions/rexec-jupyterlab"


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


class LabextensionHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        """JupyterLab, for jlpm, when there is something to build and Node.js to build it."""
        if os.environ.get("SKIP_JUPYTER_BUILDER"):
            return []
        due = needs_build(Path(self.root) / "labextension") and shutil.which("node") is not None
        return [JUPYTERLAB] if due else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Ship the built extension (after hatch-jupyter-builder's hook built it)."""
        if self.target_name != "wheel":
            return
        dist = Path(self.root) / "labextension" / "dist"
        if not (dist / "package.json").exists():
            return
        build_data["shared_data"]["labextension/dist"] = LABEXTENSIONS
        build_data["shared_data"]["labextension/install.json"] = f"{LABEXTENSIONS}/install.json"


def build_extension(target_name: str, version: str) -> None:
    """Build ``labextension/dist`` if it is missing or stale (hatch-jupyter-builder's hook)."""
    if not needs_build(EXTENSION):
        return
    if shutil.which("node") is None:
        if version != "editable":
            raise RuntimeError("building the JupyterLab extension needs Node.js 20+ on PATH")
        warnings.warn(
            "Node.js not found: installing without the JupyterLab extension (rexec-jupyterlab). "
            "Install Node.js 20+ and reinstall to get the status bar.",
            stacklevel=1,
        )
        return
    jlpm = shutil.which("jlpm")
    if jlpm is None:
        raise RuntimeError(
            "building the JupyterLab extension needs jlpm, which comes with JupyterLab: "
            f"`pip install '{JUPYTERLAB}'` (or set SKIP_JUPYTER_BUILDER=1 to skip the extension)"
        )
    for step in (["install", "--immutable"], ["build:prod"]):
        subprocess.run([jlpm, *step], cwd=EXTENSION, check=True)
