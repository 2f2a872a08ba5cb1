"""What the Kubernetes backend puts in a user's namespace besides the workers, against a real API
server: the NetworkPolicy's DNS egress, kept up to date in namespaces made before; the Pod
Security labels.

The backend talks to the API server as a ServiceAccount bound to exactly ``RBAC_RULES``, so
every call it makes here is one the chart's ClusterRole allows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes.backend import KubernetesBackend
from rexec_spawner.config import SpawnerSettings
from tests.k8s.helpers import K8sCluster, wait_for
from tests.k8s.pod_security import restricted_violations
from tests.k8s.spawner_stack import make_k8s_settings, service_account_kubeconfig

NAMESPACE_GONE_TIMEOUT = 120
ENVIRONMENT = EnvironmentSpec("env-0123abcd", ("numpy>=1.26",))
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


@pytest.fixture(scope="module")
def sa_kubeconfig(
    k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    with service_account_kubeconfig(k8s_cluster, tmp_path_factory.mktemp("sa")) as path:
        yield path


@pytest.fixture
def release() -> str:
    return f"rx{uuid.uuid4().hex[:6]}"


def raw(call: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """An object exactly as the API server returns it (JSON, not the client's models)."""
    return dict(json.loads(call(*args, _preload_content=False).data))


def wait_namespace_gone(cluster: K8sCluster, name: str) -> None:
    def gone() -> bool:
        return name not in {n.metadata.name for n in cluster.core.list_namespace().items}

    wait_for(gone, NAMESPACE_GONE_TIMEOUT, f"namespace {name} to be deleted", interval=0.5)


def run_backend(
    settings: SpawnerSettings, signing_key: bytes, scenario: Callable[[KubernetesBackend], Any]
) -> Any:
    async def main() -> Any:
        backend = KubernetesBackend.from_settings(settings, signing_key)
        try:
            return await scenario(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def test_dns_egress_goes_only_to_the_cluster_dns_pods_and_old_policies_are_updated(
    k8s_cluster: K8sCluster, sa_kubeconfig: Path, broker_stack: Any, tmp_path: Path, release: str
) -> None:
    settings, _ = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    networking = k8s_cluster.networking

    def policy(namespace: str) -> dict[str, Any]:
        return raw(networking.read_namespaced_network_policy, "rexec-workers", namespace)

    async def scenario(backend: KubernetesBackend) -> str:
        namespace = backend.namespace("alice")
        # Remembering an environment makes the namespace and its policy, with no pod.
        await backend.set_environment("alice", "default", ENVIRONMENT)
        made = policy(namespace)
        dns = made["spec"]["egress"][1]
        assert dns == {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": DNS_PORTS,
        }
        assert made["metadata"]["annotations"]["rexec.dev/spec-hash"]

        # The same settings again: nothing is written.
        await backend.set_environment("alice", "default", ENVIRONMENT)
        version = made["metadata"]["resourceVersion"]
        assert policy(namespace)["metadata"]["resourceVersion"] == version

        # A policy as an older spawner made it (DNS to any address, no digest) is replaced, with
        # the chart's RBAC: update, for this name only.
        old = policy(namespace)
        old["spec"]["egress"][1] = {"ports": DNS_PORTS}
        del old["metadata"]["annotations"]
        networking.replace_namespaced_network_policy("rexec-workers", namespace, old)
        assert "to" not in policy(namespace)["spec"]["egress"][1]
        await backend.set_environment("alice", "default", ENVIRONMENT)
        assert policy(namespace)["spec"]["egress"][1] == dns

        assert await backend.delete("alice", "default") is False  # no worker, only the namespace
        return namespace

    namespace = run_backend(settings, broker_stack.signing_key, scenario)
    wait_namespace_gone(k8s_cluster, namespace)


RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}


def test_user_namespaces_carry_the_restricted_pod_security_labels(
    k8s_cluster: K8sCluster, sa_kubeconfig: Path, broker_stack: Any, tmp_path: Path, release: str
) -> None:
    """This API server (1.20) has no PodSecurity admission (1.23+), so it cannot refuse a pod
    for the labels; it proves they are on the namespace, and the pod it stored (with its
    defaults) is checked against the profile control by control."""
    settings, _ = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )

    async def scenario(backend: KubernetesBackend) -> str:
        record = await backend.ensure("alice", "default")
        namespace = str(record.info["namespace"])
        labels = raw(k8s_cluster.core.read_namespace, namespace)["metadata"]["labels"]
        assert RESTRICTED.items() <= labels.items(), labels
        pod = raw(k8s_cluster.core.read_namespaced_pod, "worker-default", namespace)
        assert restricted_violations(pod) == []
        assert await backend.delete("alice", "default") is True
        return namespace

    namespace = run_backend(settings, broker_stack.signing_key, scenario)
    wait_namespace_gone(k8s_cluster, namespace)
