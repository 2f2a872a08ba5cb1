"""Setting the packages of the worker from the client (``set_environment``, ``%rexec_env``).

The flow:

1. the spawner checks the requirements and records them for the worker (``PUT .../environment``;
   a refused line raises :class:`~rexec.requirements.RequirementsError` naming it). Without a
   spawner the same check runs here;
2. if the worker already runs that environment, nothing else happens ("already active");
3. otherwise the worker checks them again, builds the environment once (pip's output streams to
   ``output`` live) or finds it built, answers, and restarts itself into it — its variables are
   gone — and registers again, which this waits for with a deadline.

A build that fails raises :class:`EnvironmentBuildError` with pip's own message; the worker keeps
running in its previous environment with its variables.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from rexec import protocol as p
from rexec.client.outputs import ConsoleOutput, OutputHandler
from rexec.client.replies import raise_for_reply
from rexec.client.session import Session
from rexec.client.spawner import SpawnerClient
from rexec.errors import ConfigError, RexecError, SpawnError, WorkerDied
from rexec.requirements import (
    BASE_ENVIRONMENT,
    RequirementsError,
    environment_id,
    parse_requirements,
)

BUILD_TIMEOUT = 1800.0
RESTART_TIMEOUT = 120.0


class EnvironmentBuildError(RexecError):
    """The worker could not build the environment; the message has pip's own error lines."""


class EnvironmentClient(SpawnerClient):
    """The spawner's environment routes."""

    def _environment(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self._send(method, f"/api/v1/workers/{name}/environment", json=body)
        if response.status_code == 422:
            data = _json(response)
            if {"line_number", "line", "reason"} <= set(data):
                raise RequirementsError(int(data["line_number"]), str(data["line"]), data["reason"])
            raise ConfigError(f"the spawner rejected the request: {data.get('detail')}")
        if response.status_code == 404 and method == "GET":
            return None
        if response.status_code >= 400:
            detail = _json(response).get("detail") or response.text[:300]
            raise SpawnError(f"the spawner answered {response.status_code}: {detail}")
        return response.json()

    def put_environment(self, name: str, requirements: str | list[str]) -> dict[str, Any]:
        return dict(self._environment("PUT", name, {"requirements": requirements}))

    def get_environment(self, name: str) -> dict[str, Any] | None:
        return self._environment("GET", name)

    def delete_environment(self, name: str) -> dict[str, Any]:
        return dict(self._environment("DELETE", name))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _record(
    session: Session, requirements: str | list[str]
) -> tuple[dict[str, Any], list[str] | None]:
    """Check and record the requirements with the spawner, or check them here without one.

    Returns the spawner's answer and the lines recorded before (None without a spawner), so a
    failed switch can put them back.
    """
    profile = session.profile
    if profile.spawner_url:
        api = EnvironmentClient(profile.spawner_url, profile.require_token())
        try:
            before = api.get_environment(profile.worker)
            answer = api.put_environment(profile.worker, requirements)
        finally:
            api.close()
        return answer, list((before or {}).get("requirements") or [])
    return _check_here(session, requirements), None


def _restore(session: Session, lines: list[str] | None) -> None:
    """Put back what the spawner had recorded before a switch that failed."""
    profile = session.profile
    if lines is None or not profile.spawner_url:
        return
    api = EnvironmentClient(profile.spawner_url, profile.require_token())
    try:
        if lines:
            api.put_environment(profile.worker, lines)
        else:
            api.delete_environment(profile.worker)
    except RexecError:
        pass  # the switch's own error is what the caller needs to see
    finally:
        api.close()


def _check_here(session: Session, requirements: str | list[str]) -> dict[str, Any]:
    parsed = parse_requirements(requirements)
    python = str((session.worker_info or {}).get("python_minor") or "")
    env_id = environment_id(parsed, python) if python else None
    return {"env_id": env_id, "requirements": parsed.lines(), "python": python}


def read_requirements(requirements_file: str | Path) -> str:
    path = Path(requirements_file).expanduser()
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check the path") from None


def set_environment(
    session: Session, requirements_file: str | Path, output: OutputHandler | None = None
) -> dict[str, Any]:
    """Give the session's worker the packages listed in ``requirements_file``.

    Returns ``{"env_id", "status", "cached", "restarted", "requirements", "python",
    "seconds"}``; ``status`` is ``active`` (it already ran it: nothing happened), ``cached``
    (switched to an environment built before), ``built`` or ``base``. See the module docstring.
    """
    return apply_requirements(session, read_requirements(requirements_file), output)


def reset_environment(session: Session, output: OutputHandler | None = None) -> dict[str, Any]:
    """Back to the worker's base environment (restarts the worker unless it runs it already)."""
    return apply_requirements(session, "", output)


def apply_requirements(
    session: Session,
    requirements: str | list[str],
    output: OutputHandler | None = None,
    *,
    build_timeout: float = BUILD_TIMEOUT,
    restart_timeout: float = RESTART_TIMEOUT,
) -> dict[str, Any]:
    """Like :func:`set_environment`, for the requirements file's text (or its lines)."""
    handler = output or ConsoleOutput()
    started = time.monotonic()
    session.connect()
    recorded, before = _record(session, requirements)
    current = (session.worker_info or {}).get("env_id") or BASE_ENVIRONMENT
    wanted = recorded.get("env_id")
    if wanted is not None and wanted == current:
        _say(handler, f"environment {wanted} is already active; nothing to do\n")
        return _result(recorded, "active", False, started)
    try:
        reply = _switch(session, list(recorded["requirements"]), handler, build_timeout)
    except BaseException:
        _restore(session, before)
        raise
    if reply is None:  # the worker restarted before its answer could leave
        if not wanted:
            raise WorkerDied(
                "the worker restarted while switching environments; check `%rexec_status`"
            )
        reply = {"env_id": wanted, "status": "switched", "restart": True}
    if not reply.get("restart"):
        recorded = {**recorded, "env_id": reply.get("env_id")}
        return _result(recorded, str(reply.get("status")), False, started)
    env_id = str(reply["env_id"])
    _wait_for_environment(session, env_id, restart_timeout)
    status = str(reply.get("status"))
    how = {"built": "built", "cached": "reused", "base": "base"}.get(status, status)
    _say(
        handler,
        f"worker restarted into environment {env_id} ({how}, {time.monotonic() - started:.1f} s);"
        " its variables are gone\n",
    )
    return _result({**recorded, "env_id": env_id}, status, True, started)


def _switch(
    session: Session, lines: list[str], output: OutputHandler, timeout: float
) -> dict[str, Any] | None:
    """Ask the worker to switch; its answer, or None if it restarted before answering."""

    def frames_for(request_id: str) -> list[Any]:
        body = p.make_json_frame({"requirements": lines})
        return p.make_request(request_id, p.OP_ENVIRONMENT, [body])

    header, payload = session._run(frames_for, timeout, output)
    error = header.get("error") or {}
    if error.get("code") == p.E_WORKER_DIED:
        return None  # the reply was lost as the worker restarted; registration tells the rest
    if error.get("code") == p.E_ENVIRONMENT:
        raise EnvironmentBuildError(str(error.get("message")))
    raise_for_reply(header, payload)
    return dict(p.parse_json_frame(payload[0]))


def _wait_for_environment(session: Session, env_id: str, timeout: float) -> None:
    """Wait until the worker registered again, running ``env_id``."""
    deadline = time.monotonic() + timeout
    while True:
        info = session.worker_info or {}
        if info.get("env_id") == env_id:
            return
        if time.monotonic() >= deadline:
            seen = info.get("env_error") or f"it runs {info.get('env_id', 'nothing')!r}"
            raise WorkerDied(
                f"the worker did not come back in environment {env_id} within {timeout:.0f} s "
                f"({seen}); check the worker's log (`rexec status`)"
            )
        time.sleep(0.05)


def _say(output: OutputHandler, text: str) -> None:
    output.handle("stream", {"name": "stdout", "text": text})


def _result(
    recorded: dict[str, Any], status: str, restarted: bool, started: float
) -> dict[str, Any]:
    return {
        "env_id": recorded.get("env_id"),
        "status": status,
        "cached": status in ("active", "cached", "base"),
        "restarted": restarted,
        "requirements": list(recorded.get("requirements") or []),
        "python": recorded.get("python"),
        "seconds": round(time.monotonic() - started, 3),
    }
