"""A spawner with the Kubernetes backend, for the k8s tier: a real broker on loopback, a real
uvicorn spawner, and a ServiceAccount kubeconfig bound to exactly ``RBAC_RULES``."""

from __future__ import annotations

import base64
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from rexec.auth import AuthSettings
from rexec_spawner.app import create_app
from rexec_spawner.backends.kubernetes.rbac import RBAC_RULES
from rexec_spawner.config import KubernetesSettings, SpawnerSettings
from tests.k8s.helpers import K8sCluster, wait_for
from tests.support.servers import serve
from tests.support.spawner import make_spawner_fixture


@contextmanager
def service_account_kubeconfig(cluster: K8sCluster, directory: Path) -> Iterator[Path]:
    """A kubeconfig for a fresh ServiceAccount bound (cluster-wide) to exactly RBAC_RULES."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    core = cluster.core
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"rexec-spawner-{suffix}", "rexec-spawner"
    role = f"rexec-test-spawner-{suffix}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        rbac.create_cluster_role({"metadata": {"name": role}, "rules": RBAC_RULES})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }
        )
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {
                    "name": f"{name}-token",
                    "annotations": {"kubernetes.io/service-account.name": name},
                },
                "type": "kubernetes.io/service-account-token",
            },
        )

        def token() -> str | None:
            data = core.read_namespaced_secret(f"{name}-token", namespace).data or {}
            return base64.b64decode(data["token"]).decode() if data.get("token") else None

        admin = yaml.safe_load(cluster.kubeconfig.read_text())
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"][:1],
            "users": [{"name": name, "user": {"token": wait_for(token, 60, "the SA token")}}],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": admin["clusters"][0]["name"], "user": name},
                }
            ],
            "current-context": name,
        }
        path = directory / "spawner.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        yield path
    finally:
        for delete in (
            lambda: rbac.delete_cluster_role_binding(role),
            lambda: rbac.delete_cluster_role(role),
            lambda: core.delete_namespace(namespace),
        ):
            try:
                delete()
            except Exception:
                pass


@dataclass
class K8sSpawner:
    url: str
    settings: SpawnerSettings
    tokens: dict[str, str]

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def put(self, user: str, name: str = "default") -> httpx.Response:
        return httpx.put(
            f"{self.url}/api/v1/workers/{name}", headers=self.headers(user), timeout=60
        )

    def get(self, user: str, name: str = "default") -> httpx.Response:
        return httpx.get(
            f"{self.url}/api/v1/workers/{name}", headers=self.headers(user), timeout=60
        )

    def delete(self, user: str, name: str = "default") -> httpx.Response:
        return httpx.delete(
            f"{self.url}/api/v1/workers/{name}", headers=self.headers(user), timeout=60
        )

    def wait_state(
        self, user: str, states: tuple[str, ...], name: str = "default", timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(user, name).json()
            if body.get("state") in states:
                return dict(body)
            if time.monotonic() > deadline:
                raise AssertionError(f"worker never reached {states}: {body}")
            time.sleep(0.2)


def make_k8s_settings(
    root: Path,
    broker_stack: Any,
    kubeconfig: Path,
    users: dict[str, tuple[str, ...]],
    release: str,
    **overrides: Any,
) -> tuple[SpawnerSettings, dict[str, str]]:
    k8s_values: dict[str, Any] = {
        "kubeconfig": kubeconfig,
        "release": release,
        "namespace_prefix": f"{release}-",
        # The test node agent runs the command on this machine: this Python, this checkout.
        "worker_command": (sys.executable, "-m", "rexec", "worker"),
        # On a real cluster (REXEC_K8S_EXTERNAL=1 with the node agent) only the agent's node can
        # reach the broker these tests run on 127.0.0.1.
        "node_selector": {"rexec.test/node-agent": "true"},
        **overrides.pop("kubernetes", {}),
    }
    kubernetes = KubernetesSettings(**k8s_values)
    root.mkdir(parents=True, exist_ok=True)
    # Users get tokens the broker accepts too, so the same token spawns and connects.
    tokens = {user: broker_stack.add_user(user, groups) for user, groups in users.items()}
    fixture = make_spawner_fixture(
        root,
        users={},
        auth=AuthSettings(token_file=broker_stack.tokens_file),
        backend="kubernetes",
        broker_url=broker_stack.frontend,
        broker_backend_url=broker_stack.backend,
        signing_key_path=broker_stack.directory / "signing.key",
        kubernetes=kubernetes,
        worker_ready_timeout=60.0,
        **overrides,
    )
    return fixture.settings, tokens


@contextmanager
def run_spawner(settings: SpawnerSettings, tokens: dict[str, str]) -> Iterator[K8sSpawner]:
    with serve(create_app(settings), probe="/healthz") as url:
        yield K8sSpawner(url, settings, tokens)


def with_kubernetes(settings: SpawnerSettings, **changes: Any) -> SpawnerSettings:
    return replace(settings, kubernetes=replace(settings.kubernetes, **changes))
