"""Fixtures of the `k8s` tier: a real Kubernetes API (control plane on 127.0.0.1) and the test
node agent that runs pods as local processes.

Where the cluster comes from:
* ``REXEC_K8S_EXTERNAL=1`` and ``KUBECONFIG`` set: that cluster (kind, k3s...) is used as is.
  The node agent then only runs if ``REXEC_K8S_NODE_AGENT=1`` (a real cluster has kubelets).
* Otherwise scripts/k8s/control-plane starts etcd + kube-apiserver + kube-controller-manager +
  kube-scheduler for this session, in a temp state dir, and stops them at the end. It needs the
  binaries from scripts/k8s/build.sh: without them the tests are skipped, unless ``CI`` is set,
  in which case they are built first (tens of minutes; the timeout of these tests allows it).

All tests in tests/k8s are marked ``k8s``: deselect them with ``-m "not k8s"``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.helpers import NODE_NAME, K8sCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "k8s"
CACHE = Path(os.environ.get("REXEC_K8S_CACHE", "/var/cache/rexec-k8s"))
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
START_TIMEOUT = 300  # control-plane start, seconds (normally ~15-30 s)
BUILD_TIMEOUT = 75 * 60
TEST_TIMEOUT = 300  # per test, including the session fixtures' setup on the first one

HERE = Path(__file__).resolve().parent


def _is_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _external() -> bool:
    return os.environ.get("REXEC_K8S_EXTERNAL") == "1" and bool(os.environ.get("KUBECONFIG"))


def _binaries_present() -> bool:
    return all(os.access(CACHE / "bin" / b, os.X_OK) for b in BINARIES)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "k8s: needs a real Kubernetes API (local control plane from scripts/k8s, "
        "or REXEC_K8S_EXTERNAL=1 with KUBECONFIG)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; only ours get the marker and the longer timeout
    # (the first test pays for starting the control plane, and in CI maybe for the build).
    timeout = TEST_TIMEOUT
    if not _external() and not _binaries_present() and _is_ci():
        timeout += BUILD_TIMEOUT
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.k8s)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(timeout))


def _build_binaries() -> None:
    log = Path(tempfile.gettempdir()) / "rexec-k8s-build.log"
    with open(log, "wb") as out:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "build.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    if proc.returncode != 0 or not _binaries_present():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"scripts/k8s/build.sh failed (exit {proc.returncode}); log {log}:\n{tail}")


def _control_plane(cmd: str, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REXEC_K8S_STATE": str(state), "REXEC_K8S_CACHE": str(CACHE)}
    return subprocess.run(
        [str(SCRIPTS / "control-plane"), cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[K8sCluster]:
    kubernetes = pytest.importorskip(
        "kubernetes", reason="the k8s tier needs the official client: pip install kubernetes"
    )

    if _external():
        kubeconfig = Path(os.environ["KUBECONFIG"])
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        yield K8sCluster(kubeconfig, api, external=True)
        api.close()
        return

    if not _binaries_present():
        if not _is_ci():
            pytest.skip(
                f"Kubernetes binaries not built in {CACHE}/bin: run "
                "`sudo scripts/k8s/build.sh` once (~10 min), or set REXEC_K8S_EXTERNAL=1 "
                "and KUBECONFIG to use an existing cluster"
            )
        _build_binaries()

    state = Path(tempfile.mkdtemp(prefix="rexec-k8s-"))
    started = time.monotonic()
    try:
        proc = _control_plane("start", state, START_TIMEOUT)
    except subprocess.TimeoutExpired:
        _control_plane("stop", state, 120)
        pytest.fail(f"control plane did not start within {START_TIMEOUT}s")
    if proc.returncode != 0:
        _control_plane("stop", state, 120)
        pytest.fail(f"scripts/k8s/control-plane start failed:\n{proc.stderr[-6000:]}")
    kubeconfig = state / "admin.kubeconfig"
    print(f"\nk8s control plane up in {time.monotonic() - started:.1f}s ({state})")
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield K8sCluster(kubeconfig, api, external=False, state_dir=state)
    finally:
        api.close()
        stop = _control_plane("stop", state, 120)
        if stop.returncode != 0:
            print(f"control-plane stop failed:\n{stop.stderr}")


@pytest.fixture(scope="session")
def node_agent(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The test node agent, registered as node `rexec-test-node`, for the whole session."""
    if k8s_cluster.external and os.environ.get("REXEC_K8S_NODE_AGENT") != "1":
        pytest.skip(
            "external cluster: its kubelets run pods (set REXEC_K8S_NODE_AGENT=1 to "
            "add the test node agent anyway)"
        )
    from tests.k8s.node_agent import NodeAgent

    agent = NodeAgent(
        k8s_cluster.api_client,
        NODE_NAME,
        workdir=tmp_path_factory.mktemp("node-agent"),
        # So pods can `python -m rexec ...` from this checkout.
        extra_env={
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            )
        },
    )
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def k8s_namespace(k8s_cluster: K8sCluster) -> Iterator[str]:
    """A fresh namespace, ready for pods, deleted afterwards (without waiting for it to go).

    'Ready for pods' means its default ServiceAccount has its token Secret: until then the
    ServiceAccount admission plugin rejects pods, on this plane as on a real 1.20 cluster."""
    core = k8s_cluster.core
    name = f"rexec-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"rexec.test/k8s": "true"}}})

    def sa_ready() -> bool:
        sa = core.read_namespaced_service_account("default", name)
        return bool(sa.secrets) or k8s_cluster.external  # 1.24+ clusters create no secrets

    wait_for(sa_ready, 60, f"the default ServiceAccount of {name}")
    yield name
    from kubernetes.client.rest import ApiException

    try:
        core.delete_namespace(name, _request_timeout=(5, 20))
    except ApiException as exc:
        if exc.status != 404:
            raise
