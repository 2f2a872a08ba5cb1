"""The spawner's Kubernetes backend against a real API server: spawn through the HTTP API, run
code on the pod's worker through a real broker, fail fast, cull, adopt after a restart, delete.

The spawner talks to the API server as a ServiceAccount bound to exactly ``RBAC_RULES``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rexec.client.outputs import CollectingOutput
from rexec.client.remote import remote_func
from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes.backend import KubernetesBackend
from rexec_spawner.config import ResourceProfile
from tests.k8s.helpers import NODE_NAME, K8sCluster, wait_for
from tests.k8s.spawner_stack import (
    make_k8s_settings,
    run_spawner,
    service_account_kubeconfig,
)

NAMESPACE_GONE_TIMEOUT = 120


@pytest.fixture(scope="module")
def sa_kubeconfig(
    k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    with service_account_kubeconfig(k8s_cluster, tmp_path_factory.mktemp("sa")) as path:
        yield path


@pytest.fixture
def release() -> str:
    return f"rx{uuid.uuid4().hex[:6]}"


def _namespaces(cluster: K8sCluster, release: str) -> set[str]:
    items = cluster.core.list_namespace(label_selector=f"rexec.dev/release={release}").items
    return {item.metadata.name for item in items}


def _wait_namespace_gone(cluster: K8sCluster, name: str) -> None:
    def gone() -> bool:
        return name not in {n.metadata.name for n in cluster.core.list_namespace().items}

    wait_for(gone, NAMESPACE_GONE_TIMEOUT, f"namespace {name} to be deleted", interval=0.5)


def _as_json(cluster: K8sCluster, obj: Any) -> dict[str, Any]:
    return dict(cluster.api_client.sanitize_for_serialization(obj))


def test_spawn_run_code_and_delete_everything(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    with run_spawner(settings, tokens) as spawner:
        started = time.monotonic()
        created = spawner.put("alice")
        assert created.status_code == 201, created.text
        body = spawner.wait_state("alice", ("ready", "failed"))
        ready_seconds = time.monotonic() - started
        assert body["state"] == "ready", body
        steps = [event["message"] for event in body["progress"]]
        assert steps[0] == "worker pod created; waiting for a node"
        assert f"scheduled on node {NODE_NAME}" in steps
        assert "worker container running" in steps
        assert steps[-1] == "worker connected to the broker", steps
        namespace = body["info"]["namespace"]
        assert namespace.startswith(f"{release}-alice-") and len(namespace) <= 63
        assert body["info"]["python"]  # what the worker told the broker
        print(f"\nworker ready {ready_seconds:.1f} s after PUT")

        # Idempotent: a second PUT returns the same worker.
        again = spawner.put("alice")
        assert again.status_code == 200 and again.json()["created_at"] == body["created_at"]

        pod = _as_json(
            k8s_cluster, k8s_cluster.core.read_namespaced_pod("worker-default", namespace)
        )
        spec = pod["spec"]
        container = spec["containers"][0]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"] == {
            "requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "10Gi"},
        }
        sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in spec["volumes"] if "emptyDir" in v}
        assert sizes == {"tmp": "2Gi", "home": "2Gi", "envs": "4Gi"}
        assert "ports" not in container
        secret = k8s_cluster.core.read_namespaced_secret("worker-default-credential", namespace)
        credential = __import__("base64").b64decode(secret.data["credential"]).decode()
        assert credential.startswith("rxw1.")
        assert credential not in json.dumps(pod)  # only the mounted file holds it
        assert pod["metadata"]["annotations"]["rexec.dev/user"] == "alice"
        policy = _as_json(
            k8s_cluster,
            k8s_cluster.networking.read_namespaced_network_policy("rexec-workers", namespace),
        )
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert not policy["spec"].get("ingress")
        backend_port = int(broker_stack.backend.rsplit(":", 1)[1])
        assert policy["spec"]["egress"][0]["ports"] == [{"port": backend_port, "protocol": "TCP"}]

        # The node agent runs the pod's command; the worker registered with the real broker.
        session = session_factory(broker_stack.profile(tokens["alice"]))

        @remote_func(session=session)
        def where(x: int) -> tuple[int, int]:
            return os.getpid(), x * 2

        pid, doubled = where(21)
        assert doubled == 42 and pid == node_agent.pid_of(namespace, "worker-default")
        output = CollectingOutput()
        reply = session.execute("answer = 6 * 7\nprint(answer)", output=output)
        assert reply["status"] == "ok"
        assert output.text() == "42\n"

        deleted = spawner.delete("alice")
        assert deleted.json() == {"deleted": True}
        started = time.monotonic()
        _wait_namespace_gone(k8s_cluster, namespace)
        print(f"namespace gone {time.monotonic() - started:.1f} s after DELETE")
        assert spawner.get("alice").status_code == 404
        assert spawner.delete("alice").json() == {"deleted": False}


def test_two_users_get_two_isolated_namespaces(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    users = {"alice": (), "Alice": ()}  # slug alike, must not collide
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, users, release
    )
    with run_spawner(settings, tokens) as spawner:
        for user in users:
            assert spawner.put(user).status_code == 201
        bodies = {user: spawner.wait_state(user, ("ready", "failed")) for user in users}
        assert all(body["state"] == "ready" for body in bodies.values()), bodies
        namespaces = {body["info"]["namespace"] for body in bodies.values()}
        assert len(namespaces) == 2 and namespaces == _namespaces(k8s_cluster, release)

        first = session_factory(broker_stack.profile(tokens["alice"]))
        second = session_factory(broker_stack.profile(tokens["Alice"]))
        first.execute("private = 'alice only'", output=CollectingOutput())
        reply = second.execute("private", output=CollectingOutput())
        assert reply["status"] == "error" and reply["ename"] == "NameError"
        assert first.call(os.getpid) != second.call(os.getpid)

        # Each user sees and deletes only their own worker.
        assert [w["user"] for w in spawner_list(spawner, "alice")] == ["alice"]
        assert spawner.delete("Alice").json() == {"deleted": True}
        assert spawner.get("alice").json()["state"] == "ready"
        assert spawner.delete("alice").json() == {"deleted": True}
        for namespace in namespaces:
            _wait_namespace_gone(k8s_cluster, namespace)


def spawner_list(spawner: Any, user: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(f"{spawner.url}/api/v1/workers", headers=spawner.headers(user))
    return list(response.json())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"profiles": {"default": ResourceProfile(cpu_request="500", cpu_limit="500")}},
            "Insufficient cpu",
        ),
        (
            {"worker_command": (sys.executable, "-c", "import sys; sys.exit(3)")},
            "keeps crashing (CrashLoopBackOff",
        ),
    ],
    ids=["unschedulable", "crash-loop"],
)
def test_a_stuck_pod_fails_fast_with_the_reason(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, tmp_path, release, change, expected
):
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release, kubernetes=change
    )
    with run_spawner(settings, tokens) as spawner:
        started = time.monotonic()
        assert spawner.put("alice").status_code == 201
        body = spawner.wait_state("alice", ("ready", "failed"), timeout=30)
        elapsed = time.monotonic() - started
        assert body["state"] == "failed", body
        assert expected in body["error"], body["error"]
        assert body["error"].startswith(
            ("the worker pod cannot be scheduled", "the worker container")
        )
        assert body["progress"][-1]["message"] == body["error"]
        assert elapsed < 15, f"took {elapsed:.1f} s to report the failure"
        print(f"\nfailure reported {elapsed:.1f} s after PUT")
        namespace = body["info"]["namespace"]
        assert spawner.delete("alice").json() == {"deleted": True}
        _wait_namespace_gone(k8s_cluster, namespace)


def test_culling_removes_an_idle_worker_but_not_a_busy_one(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"idle": (), "busy": ()},
        release,
        idle_timeout=2.0,
        cull_interval=0.5,
    )
    with run_spawner(settings, tokens) as spawner:
        for user in ("idle", "busy"):
            assert spawner.put(user).status_code == 201
        for user in ("idle", "busy"):
            assert spawner.wait_state(user, ("ready", "failed"))["state"] == "ready"
        busy = session_factory(broker_stack.profile(tokens["busy"]))
        result: list[Any] = []
        # A silent 8-second call: no output at all, still activity.
        call = threading.Thread(target=lambda: result.append(busy.call(time.sleep, (8,))))
        call.start()
        wait_for(lambda: spawner.get("idle").status_code == 404, 20, "the idle worker culled")
        assert spawner.get("busy").json()["state"] == "ready"
        call.join(30)
        assert result == [None]  # the call finished on a worker nobody culled
        wait_for(lambda: spawner.get("busy").status_code == 404, 20, "busy worker culled once idle")


def test_a_restarted_spawner_adopts_existing_workers(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    with run_spawner(settings, tokens) as first:
        assert first.put("alice").status_code == 201
        before = first.wait_state("alice", ("ready", "failed"))
        assert before["state"] == "ready"
    # The first spawner is gone; its pod is not.
    with run_spawner(settings, tokens) as second:
        after = second.get("alice").json()
        assert after["state"] == "ready"
        assert after["created_at"] == before["created_at"]
        assert second.put("alice").status_code == 200  # adopted, not replaced
        session = session_factory(broker_stack.profile(tokens["alice"]))
        assert session.call(lambda: 1 + 1) == 2
        assert second.delete("alice").json() == {"deleted": True}
        _wait_namespace_gone(k8s_cluster, before["info"]["namespace"])


def test_environment_is_kept_in_the_cluster_and_given_to_new_pods(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, tmp_path, release
):
    settings, _ = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    environment = EnvironmentSpec("env-0123abcd", ("numpy>=1.26", "pandas<3"))

    async def scenario() -> None:
        first = KubernetesBackend.from_settings(settings, broker_stack.signing_key)
        assert await first.get_environment("alice", "default") is None
        await first.set_environment("alice", "default", environment)
        await first.close()

        second = KubernetesBackend.from_settings(settings, broker_stack.signing_key)
        try:
            assert await second.get_environment("alice", "default") == environment
            assert await second.get_environment("bob", "default") is None
            record = await second.ensure("alice", "default")
            pod = k8s_cluster.core.read_namespaced_pod("worker-default", record.info["namespace"])
            env = {item.name: item.value for item in pod.spec.containers[0].env}
            assert env["REXEC_ENV_ID"] == "env-0123abcd"
            assert json.loads(env["REXEC_ENV_REQUIREMENTS"]) == ["numpy>=1.26", "pandas<3"]
            assert env["REXEC_ENV_ROOT"] == "/opt/rexec/envs"
            await second.set_environment("alice", "default", None)
            assert await second.get_environment("alice", "default") is None
            assert await second.delete("alice", "default")
            return record.info["namespace"]
        finally:
            await second.close()

    namespace = asyncio.run(scenario())
    _wait_namespace_gone(k8s_cluster, namespace)
