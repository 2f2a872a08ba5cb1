"""What the Kubernetes backend puts in a user's namespace besides the workers, against a real API
server: the NetworkPolicy's DNS egress, kept up to date in namespaces made before; the Pod
Security labels; the ResourceQuota and LimitRange that make the cluster enforce the per-user
worker limit, and that limit in the backend.

The backend talks to the API server as a ServiceAccount bound to exactly ``RBAC_RULES``, so
every call it makes here is one the chart's ClusterRole allows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rexec.errors import WorkerLimitReached
from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes import objects
from rexec_spawner.backends.kubernetes.backend import KubernetesBackend
from rexec_spawner.backends.kubernetes.quantity import parse_quantity
from rexec_spawner.backends.kubernetes.spec import make_worker_spec
from rexec_spawner.config import ResourceProfile, SpawnerSettings
from tests.k8s.helpers import K8sCluster, wait_for
from tests.k8s.pod_security import restricted_violations
from tests.k8s.spawner_stack import make_k8s_settings, service_account_kubeconfig

ApiException = pytest.importorskip("kubernetes.client.rest").ApiException

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
    k8s_cluster: K8sCluster,
    sa_kubeconfig: Path,
    broker_stack: Any,
    tmp_path: Path,
    release: str,
    caplog: pytest.LogCaptureFixture,
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

        # A namespace made without the labels (an older spawner) is not relabelled (no RBAC for
        # that) but reported, with the command that labels it.
        k8s_cluster.core.patch_namespace(
            namespace, {"metadata": {"labels": dict.fromkeys(RESTRICTED)}}
        )
        with caplog.at_level("WARNING", logger="rexec_spawner.backends.kubernetes.backend"):
            await backend.set_environment("alice", "default", ENVIRONMENT)
            await backend.set_environment("alice", "default", ENVIRONMENT)
        warnings = [
            r.getMessage() for r in caplog.records if "Pod Security labels" in r.getMessage()
        ]
        assert len(warnings) == 1, warnings  # once per namespace
        assert f"kubectl label --overwrite namespace {namespace} " in warnings[0]
        assert "pod-security.kubernetes.io/enforce=restricted" in warnings[0]
        assert await backend.delete("alice", "default") is True
        return namespace

    namespace = run_backend(settings, broker_stack.signing_key, scenario)
    wait_namespace_gone(k8s_cluster, namespace)


BIG = ResourceProfile("500m", "2", "512Mi", "2Gi", "2Gi", "20Gi")


def hard_values(quota: dict[str, Any]) -> dict[str, Any]:
    return {key: parse_quantity(value) for key, value in quota.items()}


def test_the_cluster_enforces_the_worker_limit_with_a_quota_and_a_limit_range(
    k8s_cluster: K8sCluster,
    node_agent: Any,
    sa_kubeconfig: Path,
    broker_stack: Any,
    tmp_path: Path,
    release: str,
) -> None:
    """Two workers per user: a third name is refused by the spawner (WorkerLimitReached), an
    existing one is not, and the API server itself refuses a third pod made behind the
    spawner's back (403 exceeded quota) and a container above the largest profile. The node
    agent runs the workers, so they count as active (an unschedulable pod is a failed worker)."""
    settings, _ = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": (), "bob": ()},
        release,
        max_workers_per_user=2,
        kubernetes={"profiles": {"default": ResourceProfile(), "big": BIG}},
    )
    core = k8s_cluster.core

    def quota(namespace: str) -> dict[str, Any]:
        return raw(core.read_namespaced_resource_quota, "rexec-workers", namespace)

    async def scenario(backend: KubernetesBackend) -> list[str]:
        first = await backend.ensure("alice", "w1")
        await backend.ensure("alice", "w2")
        namespace = str(first.info["namespace"])

        # The quota: 2 pods; 2 x the largest of each request and limit over both profiles.
        made = quota(namespace)
        assert hard_values(made["spec"]["hard"]) == hard_values(
            {
                "pods": "2",
                "secrets": "6",
                "requests.cpu": "1",
                "limits.cpu": "4",
                "requests.memory": "1Gi",
                "limits.memory": "4Gi",
                "requests.ephemeral-storage": "4Gi",
                "limits.ephemeral-storage": "40Gi",
            }
        )

        def counted() -> bool:
            used = quota(namespace).get("status", {}).get("used", {})
            return used.get("pods") == "2"

        wait_for(counted, 30, "the quota controller to count the two pods")
        limits = raw(core.read_namespaced_limit_range, "rexec-workers", namespace)
        [container] = limits["spec"]["limits"]
        assert container["type"] == "Container"
        for field, expected in (
            ("max", {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "20Gi"}),
            ("default", {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "20Gi"}),
            ("defaultRequest", {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "2Gi"}),
        ):
            assert hard_values(container[field]) == hard_values(expected), field

        # The spawner refuses a third name, and never an existing worker.
        with pytest.raises(WorkerLimitReached, match="you already have 2 workers"):
            await backend.ensure("alice", "w3")
        again = await backend.ensure("alice", "w1")
        assert again.instance == first.instance

        # The cluster refuses a third pod however it is made: the spawner's own manifest,
        # created with admin rights.
        third = objects.make_worker_pod(make_worker_spec(settings, "alice", "w3", "x"))
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, third)
        assert refused.value.status == 403
        assert "exceeded quota: rexec-workers" in refused.value.body, refused.value.body

        # With room again, a container above the largest profile is refused, and one that names
        # no resources gets the LimitRange's defaults.
        assert await backend.delete("alice", "w2") is True

        def room() -> bool:
            return quota(namespace).get("status", {}).get("used", {}).get("pods") == "1"

        wait_for(room, 30, "the quota to see the deleted pod gone")
        bare: dict[str, Any] = {
            "metadata": {"name": "bare"},
            "spec": {
                "containers": [{"name": "c", "image": "x", "command": ["true"]}],
                "nodeSelector": {"rexec.test/none": "true"},  # never runs
            },
        }
        greedy = json.loads(json.dumps(bare))
        greedy["metadata"]["name"] = "greedy"
        greedy["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "64"}}
        with pytest.raises(ApiException) as capped:
            core.create_namespaced_pod(namespace, greedy)
        assert capped.value.status == 403
        assert "maximum cpu usage per Container is 2" in capped.value.body, capped.value.body
        made_bare = core.create_namespaced_pod(namespace, bare)
        resources = made_bare.spec.containers[0].resources
        assert resources.limits == {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "20Gi"}
        assert resources.requests == {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "2Gi"}
        core.delete_namespaced_pod("bare", namespace)

        # Concurrent requests of one user never overshoot: three names at once, limit two.
        results = await asyncio.gather(
            *(backend.ensure("bob", name) for name in ("b1", "b2", "b3")), return_exceptions=True
        )
        refusals = [r for r in results if isinstance(r, WorkerLimitReached)]
        records = [r for r in results if not isinstance(r, BaseException)]
        assert len(refusals) == 1 and len(records) == 2, results
        bob = backend.namespace("bob")
        pods = core.list_namespaced_pod(bob, label_selector=f"rexec.dev/release={release}")
        assert len(pods.items) == 2
        secrets = {s.metadata.name for s in core.list_namespaced_secret(bob).items}
        assert len({s for s in secrets if s.endswith("-credential")}) == 2, secrets

        for record in records:
            assert await backend.delete("bob", record.name)
        assert await backend.delete("alice", "w1")
        return [namespace, bob]

    for namespace in run_backend(settings, broker_stack.signing_key, scenario):
        wait_namespace_gone(k8s_cluster, namespace)


def test_no_worker_limit_means_no_quota(
    k8s_cluster: K8sCluster, sa_kubeconfig: Path, broker_stack: Any, tmp_path: Path, release: str
) -> None:
    """REXEC_MAX_WORKERS_PER_USER=0: a quota made earlier is deleted; the LimitRange stays."""
    limited, _ = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    unlimited = replace(limited, max_workers_per_user=0)
    core = k8s_cluster.core

    async def with_quota(backend: KubernetesBackend) -> str:
        await backend.set_environment("alice", "default", ENVIRONMENT)
        namespace = backend.namespace("alice")
        core.read_namespaced_resource_quota("rexec-workers", namespace)
        return namespace

    async def without_quota(backend: KubernetesBackend) -> None:
        await backend.set_environment("alice", "default", ENVIRONMENT)
        namespace = backend.namespace("alice")
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_resource_quota("rexec-workers", namespace)
        assert gone.value.status == 404
        core.read_namespaced_limit_range("rexec-workers", namespace)
        await backend.set_environment("alice", "default", ENVIRONMENT)  # nothing to delete
        assert await backend.delete("alice", "default") is False

    namespace = run_backend(limited, broker_stack.signing_key, with_quota)
    run_backend(unlimited, broker_stack.signing_key, without_quota)
    wait_namespace_gone(k8s_cluster, namespace)


def test_a_full_quota_is_reported_as_the_worker_limit_and_leaves_no_credential(
    k8s_cluster: K8sCluster, sa_kubeconfig: Path, broker_stack: Any, tmp_path: Path, release: str
) -> None:
    """A failed worker (here: unschedulable) is not active, so the spawner lets a new name
    through, but its pod still counts in the quota: the API server refuses the new pod, the
    user is told to delete a worker, and the new worker's credential is removed again."""
    settings, _ = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": ()},
        release,
        max_workers_per_user=1,
        kubernetes={"profiles": {"default": ResourceProfile(cpu_request="500", cpu_limit="500")}},
    )

    async def scenario(backend: KubernetesBackend) -> str:
        await backend.ensure("alice", "w1")
        namespace = backend.namespace("alice")

        async def failed() -> bool:
            record = await backend.get("alice", "w1")
            return record is not None and record.state == "failed"

        for _ in range(100):
            if await failed():
                break
            await asyncio.sleep(0.2)
        assert await failed(), "the unschedulable worker was never reported failed"
        with pytest.raises(WorkerLimitReached, match="the cluster refused another worker") as full:
            await backend.ensure("alice", "w2")
        assert "exceeded quota" in str(full.value) and "DELETE /api/v1/workers/NAME" in str(
            full.value
        )
        secrets = {
            s.metadata.name for s in k8s_cluster.core.list_namespaced_secret(namespace).items
        }
        assert "worker-w2-credential" not in secrets and "worker-w1-credential" in secrets
        assert await backend.delete("alice", "w1")
        return namespace

    namespace = run_backend(settings, broker_stack.signing_key, scenario)
    wait_namespace_gone(k8s_cluster, namespace)
