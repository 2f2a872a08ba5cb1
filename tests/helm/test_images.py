"""The image build description (docker/Dockerfile): no Docker engine runs here, so these tests
check what can be checked without one — the files it copies exist and survive .dockerignore, a
wheel builds from exactly that context, the extras it installs exist, and the users, commands and
paths agree with the chart and the spawner's Kubernetes backend."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helm.tools import CHART, REPO

pytestmark = pytest.mark.integration

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
TARGETS = ("worker", "broker", "spawner")


def stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            result[current] = []
        if current:
            result[current].append(line)
    return result


def copy_sources() -> list[str]:
    sources = []
    for lines in stages().values():
        for line in lines:
            if line.startswith("COPY ") and "--from=" not in line:
                sources += line.split()[1:-1]
    return sources


def allowed_by_dockerignore(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    allowed = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_every_component_has_a_non_root_target() -> None:
    found = stages()
    for target in TARGETS:
        assert target in found, f"docker/Dockerfile has no target {target!r}"
        users = [line for line in found[target] if line.startswith("USER ")]
        assert users == ["USER 1000:1000"], f"{target} must end as uid 1000, not {users}"


def test_python_minor_is_a_pinned_build_argument() -> None:
    text = DOCKERFILE.read_text()
    match = re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+)$", text, re.MULTILINE)
    assert match, "PYTHON_VERSION must default to a major.minor version"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={match.group(1)}", (
        "the default is the oldest Python the project supports"
    )
    assert text.count("FROM python:${PYTHON_VERSION}-slim") == 2
    assert "SKIP_JUPYTER_BUILDER=1" in text, "server images need no JupyterLab extension build"
    assert "must equal the clients'" in text


def test_copied_files_exist_and_pass_dockerignore() -> None:
    sources = copy_sources()
    assert "pyproject.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert allowed_by_dockerignore(source.rstrip("/")), f".dockerignore excludes {source}"
    assert not allowed_by_dockerignore("tests"), "tests do not belong in the build context"
    assert not allowed_by_dockerignore(".git")
    assert not allowed_by_dockerignore("labextension/node_modules")
    assert not allowed_by_dockerignore("rexec/__pycache__")


def test_installed_extras_exist() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    wanted = {"worker": {"worker"}, "broker": {"broker"}, "spawner": {"spawner", "kubernetes"}}
    for target, lines in stages().items():
        for line in lines:
            for group in re.findall(r"rexec-\*\.whl\)\[([^\]]+)\]", line):
                names = set(group.split(","))
                assert names <= set(extras), f"{target} installs unknown extras {names}"
                assert names == wanted[target], f"{target} installs {names}"


def test_images_agree_with_the_chart_and_the_backend() -> None:
    from rexec_spawner.config import KubernetesSettings

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 1000
    assert values["worker"]["runAsUser"] == 1000 == KubernetesSettings().run_as_user
    assert KubernetesSettings().worker_command[:3] == ("python", "-m", "rexec")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rexec"] == "rexec.cli:main", "the chart runs `rexec broker|spawner`"
    found = stages()
    assert 'ENTRYPOINT ["rexec", "broker"]' in found["broker"]
    assert 'ENTRYPOINT ["rexec", "spawner"]' in found["spawner"]
    # The worker pod writes only its emptyDirs; the image prepares the environments root.
    assert any("/opt/rexec/envs" in line for line in found["worker"])


def test_a_wheel_builds_from_exactly_the_build_context(tmp_path: Path) -> None:
    import importlib.util

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in requires:
        module = re.split(r"[<>=!~ \[]", requirement)[0].replace("-", "_")
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"building the wheel offline needs the build requirement {requirement}")
    context = tmp_path / "context"
    context.mkdir()

    def ignored(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(REPO)
        return {name for name in names if not allowed_by_dockerignore(str(relative / name))}

    for source in copy_sources():
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=ignored)
        else:
            shutil.copy2(src, context / source)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*command, "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SKIP_JUPYTER_BUILDER": "1"},  # as the Dockerfile's build stage
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp_path / "wheels").glob("rexec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("rexec/cli.py", "rexec_broker/command.py", "rexec_spawner/cli.py"):
        assert module in names, f"the image's wheel lacks {module}"
