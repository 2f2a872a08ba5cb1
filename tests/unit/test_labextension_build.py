"""When ``pip install`` rebuilds the JupyterLab extension (labextension/hatch_build.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_hook() -> Any:
    spec = importlib.util.spec_from_file_location(
        "rexec_lab_hook", REPO / "labextension" / "hatch_build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def extension(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.ts").write_text("export default [];\n")
    (tmp_path / "style").mkdir()
    (tmp_path / "style" / "index.css").write_text("")
    for name in ("package.json", "yarn.lock", "tsconfig.json"):
        (tmp_path / name).write_text("{}")
    return tmp_path


def touch(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


def test_missing_build_is_due(extension: Path) -> None:
    assert load_hook().needs_build(extension) is True


def test_fresh_build_is_not_rebuilt_and_any_newer_source_triggers_one(extension: Path) -> None:
    hook = load_hook()
    built = extension / "dist" / "package.json"
    built.parent.mkdir()
    built.write_text("{}")
    sources = [p for p in extension.rglob("*") if p.is_file() and "dist" not in p.parts]
    for source in sources:
        touch(source, 1_000_000)
    touch(built, 2_000_000)
    assert hook.needs_build(extension) is False
    for source in sources:
        touch(source, 3_000_000)
        assert hook.needs_build(extension) is True, source
        touch(source, 1_000_000)


def test_the_lockfile_is_committed_and_installs_are_immutable() -> None:
    assert (REPO / "labextension" / "yarn.lock").is_file()
    assert "enableImmutableInstalls: true" in (REPO / "labextension" / ".yarnrc.yml").read_text()
