"""HTTP client for the spawner API: get the broker address, create and watch the worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from rexec.errors import AuthError, AuthUnavailable, ConfigError, SpawnError

POLL_INTERVAL = 0.2
READY = "ready"
FAILED_STATES = frozenset({"failed", "stopped"})


def candidate_base_urls(url: str) -> list[str]:
    """Where the API may live for a configured URL, most specific first.

    Accepts the base URL, or the reference docs' ``.../spawn`` endpoint URL (whose prefix is an
    ingress path on a cluster, but absent on a spawner served at the root).
    """
    base = url.rstrip("/")
    if base.endswith("/spawn"):
        base = base[: -len("/spawn")]
    parts = urlsplit(base)
    origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    return [base] if base == origin else [base, origin]


class SpawnerClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self._candidates = candidate_base_urls(base_url)
        self.base_url = self._candidates[0]
        self._resolved = len(self._candidates) == 1
        self._client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _resolve(self) -> None:
        """Pick the first candidate base URL whose unauthenticated health check answers."""
        for base in self._candidates:
            try:
                if self._client.get(f"{base}/healthz").status_code == 200:
                    self.base_url = base
                    break
            except httpx.HTTPError:
                continue
        self._resolved = True

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to the API; a spawner that cannot be reached is a SpawnError."""
        if not self._resolved:
            self._resolve()
        try:
            return self._client.request(method, f"{self.base_url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise SpawnError(
                f"cannot reach the spawner at {self.base_url} ({type(exc).__name__}); "
                "is the stack running? Check with `rexec status`"
            ) from None

    def _request(self, method: str, path: str) -> Any:
        response = self._send(method, path)
        if response.status_code < 400:
            return response.json()
        detail = _detail(response)
        if response.status_code == 401:
            raise AuthError(f"the spawner refused the token: {detail}")
        if response.status_code == 403:
            raise AuthError(f"not allowed: {detail}")
        if response.status_code == 503:
            raise AuthUnavailable(f"the spawner cannot check tokens right now: {detail}")
        if response.status_code == 404:
            return None
        if response.status_code == 422:
            raise ConfigError(f"the spawner rejected the request: {detail}")
        raise SpawnError(f"the spawner answered {response.status_code}: {detail}")

    def broker(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/v1/broker"))

    def get_worker(self, name: str) -> dict[str, Any] | None:
        return self._request("GET", f"/api/v1/workers/{name}")

    def delete_worker(self, name: str) -> bool:
        answer = self._request("DELETE", f"/api/v1/workers/{name}")
        return bool(answer and answer.get("deleted"))

    def worker_log(self, name: str, tail: int = 200) -> str | None:
        """The last ``tail`` lines of the worker's log, or None if the spawner has none."""
        response = self._send("GET", f"/api/v1/workers/{name}/log", params={"tail": tail})
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise AuthError(f"the spawner refused the token: {_detail(response)}")
        if response.status_code >= 400:
            raise SpawnError(f"no worker log ({response.status_code}): {_detail(response)}")
        return response.text

    def ensure_worker(
        self,
        name: str,
        timeout: float,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Create-or-get the worker and wait until it is registered with the broker."""
        deadline = time.monotonic() + timeout
        status = self._request("PUT", f"/api/v1/workers/{name}")
        shown = 0
        while True:
            events = status.get("progress") or []
            if progress is not None:
                for event in events[shown:]:
                    progress(str(event.get("message", "")))
            shown = len(events)
            state = status.get("state")
            if state == READY:
                return dict(status)
            if state in FAILED_STATES:
                reason = status.get("error") or f"the worker is {state}"
                raise SpawnError(f"the worker {name!r} could not start: {reason}")
            if time.monotonic() >= deadline:
                raise SpawnError(
                    f"the worker {name!r} was not ready after {timeout:.0f} s (state {state!r}); "
                    "check the spawner's log, or raise the timeout"
                )
            time.sleep(POLL_INTERVAL)
            status = self._request("GET", f"/api/v1/workers/{name}") or self._request(
                "PUT", f"/api/v1/workers/{name}"
            )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else body
    return str(detail)[:500]
