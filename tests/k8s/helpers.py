"""Helpers shared by the k8s tier's fixtures and tests (import as tests.k8s.helpers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "rexec-test-node"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until `predicate()` returns something truthy (returned); AssertionError after
    `timeout` seconds. Exceptions from the predicate count as 'not yet' (last one reported)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class K8sCluster:
    kubeconfig: Path
    api_client: Any  # kubernetes.client.ApiClient
    external: bool
    state_dir: Path | None = None

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    @property
    def networking(self) -> Any:
        from kubernetes import client

        return client.NetworkingV1Api(self.api_client)

    def log_tail(self, component: str, lines: int = 40) -> str:
        """Last lines of a local control-plane component's log ('' for external clusters)."""
        if self.state_dir is None:
            return ""
        path = self.state_dir / "logs" / f"{component}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
