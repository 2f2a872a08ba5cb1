"""Kubernetes API access for the backend: plain JSON in and out, explicit 404/409 handling.

Uses the official ``kubernetes`` client. Credentials come from ``REXEC_K8S_KUBECONFIG`` when it
is set, else from the pod's service account when the spawner runs in a cluster, else from the
usual kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``). Every call runs in a worker thread
with a request timeout, so a slow API server never blocks the spawner's event loop and no call
waits forever. API errors become ``SpawnError`` with what to check; ``None``/``False`` mean
"not there" and :class:`AlreadyExists` means "already there".
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from rexec.errors import SpawnError

Json = dict[str, Any]
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class AlreadyExists(SpawnError):
    """A create call found an object with that name."""


def make_api_client(kubeconfig: Path | None) -> Any:
    """An ``ApiClient`` for the cluster the settings point at."""
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        return kubernetes.config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise SpawnError(
            f"cannot load Kubernetes credentials ({exc}); set REXEC_K8S_KUBECONFIG, or run the "
            "spawner in a pod with its service account"
        ) from None


class KubeApi:
    """The calls the backend makes: exactly what ``rbac.RBAC_RULES`` allows."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def close(self) -> None:
        self.api_client.close()

    async def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            response = function(*args, _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
            data = response.data
            return json.loads(data) if data else {}

        try:
            return await asyncio.to_thread(run)
        except ApiException as exc:
            if exc.status == 409:
                raise AlreadyExists(f"{what}: already exists") from None
            raise _api_error(what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SpawnError(
                f"cannot reach the Kubernetes API at {self.host} ({what}): {exc}"
            ) from None

    async def _maybe(self, what: str, function: Callable[..., Any], *args: Any) -> Json | None:
        try:
            result: Json = await self._call(what, function, *args)
            return result
        except NotFound:
            return None

    # --- create ------------------------------------------------------------------------------

    async def create(self, manifest: Json) -> Json:
        kind = manifest["kind"]
        namespace = manifest["metadata"].get("namespace")
        what = f"create {kind} {namespace or ''}/{manifest['metadata']['name']}"
        creators: dict[str, Callable[..., Any]] = {
            "Namespace": self.core.create_namespace,
            "Pod": self.core.create_namespaced_pod,
            "Secret": self.core.create_namespaced_secret,
            "ConfigMap": self.core.create_namespaced_config_map,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            "ResourceQuota": self.core.create_namespaced_resource_quota,
            "LimitRange": self.core.create_namespaced_limit_range,
        }
        args = (manifest,) if kind == "Namespace" else (namespace, manifest)
        result: Json = await self._call(what, creators[kind], *args)
        return result

    async def replace(self, manifest: Json) -> Json:
        """Overwrite a namespaced object (no resourceVersion: the spawner's copy wins).

        Raises :class:`NotFound` if it is not there (any more)."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        replacers: dict[str, Callable[..., Any]] = {
            "Secret": self.core.replace_namespaced_secret,
            "ConfigMap": self.core.replace_namespaced_config_map,
            "NetworkPolicy": self.networking.replace_namespaced_network_policy,
            "ResourceQuota": self.core.replace_namespaced_resource_quota,
            "LimitRange": self.core.replace_namespaced_limit_range,
        }
        result: Json = await self._call(
            f"update {kind} {meta['namespace']}/{meta['name']}",
            replacers[kind],
            meta["name"],
            meta["namespace"],
            manifest,
        )
        return result

    # --- read --------------------------------------------------------------------------------

    async def read_namespace(self, name: str) -> Json | None:
        return await self._maybe(f"read Namespace {name}", self.core.read_namespace, name)

    async def read_pod(self, namespace: str, name: str) -> Json | None:
        return await self._maybe(
            f"read Pod {namespace}/{name}", self.core.read_namespaced_pod, name, namespace
        )

    async def read(self, kind: str, namespace: str, name: str) -> Json | None:
        """One namespaced object, or None if it is not there."""
        readers: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
            "ResourceQuota": self.core.read_namespaced_resource_quota,
            "LimitRange": self.core.read_namespaced_limit_range,
        }
        return await self._maybe(f"read {kind} {namespace}/{name}", readers[kind], name, namespace)

    async def read_configmap(self, namespace: str, name: str) -> Json | None:
        return await self._maybe(
            f"read ConfigMap {namespace}/{name}",
            self.core.read_namespaced_config_map,
            name,
            namespace,
        )

    async def list_pods(self, namespace: str, label_selector: str) -> list[Json]:
        result = await self._call(
            f"list Pods in {namespace}",
            lambda **kw: self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, **kw
            ),
        )
        return list(result.get("items") or [])

    async def list_all_pods(self, label_selector: str) -> list[Json]:
        """Pods of every namespace with these labels (a restarted spawner finds its workers)."""
        result = await self._call(
            "list Pods in all namespaces",
            lambda **kw: self.core.list_pod_for_all_namespaces(label_selector=label_selector, **kw),
        )
        return list(result.get("items") or [])

    async def list_pod_events(self, namespace: str, pod: str) -> list[Json]:
        selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
        result = await self._call(
            f"list Events in {namespace}",
            lambda **kw: self.core.list_namespaced_event(namespace, field_selector=selector, **kw),
        )
        return list(result.get("items") or [])

    # --- delete ------------------------------------------------------------------------------

    async def delete(
        self, kind: str, namespace: str, name: str, grace_seconds: int | None = None
    ) -> bool:
        """Delete one object; False if it was not there. ``grace_seconds`` shortens a pod's
        termination grace period (None: the pod's own)."""
        deleters: dict[str, Callable[..., Any]] = {
            "Pod": self.core.delete_namespaced_pod,
            "Secret": self.core.delete_namespaced_secret,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "ResourceQuota": self.core.delete_namespaced_resource_quota,
        }
        deleter = deleters[kind]
        if grace_seconds is not None:
            deleter = functools.partial(deleter, grace_period_seconds=grace_seconds)
        try:
            await self._call(f"delete {kind} {namespace}/{name}", deleter, name, namespace)
        except NotFound:
            return False
        return True

    async def delete_namespace(self, name: str) -> bool:
        try:
            await self._call(f"delete Namespace {name}", self.core.delete_namespace, name)
        except NotFound:
            return False
        return True


class NotFound(SpawnError):
    """The object does not exist (404)."""


class Forbidden(SpawnError):
    """The API refused the call (403): RBAC, or admission (e.g. the namespace is terminating, a
    quota is full). ``detail`` is the API server's own message."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def _api_error(what: str, exc: ApiException) -> SpawnError:
    message = exc.reason or ""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message") or message
    except (TypeError, ValueError):
        pass
    if exc.status == 404:
        return NotFound(f"{what}: not found")
    if exc.status == 403:
        return Forbidden(
            f"{what}: forbidden ({message}); check the spawner's RBAC (ClusterRole of the chart)",
            message,
        )
    return SpawnError(f"{what}: Kubernetes API error {exc.status} ({message})")
