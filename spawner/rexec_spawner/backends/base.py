"""The backend interface: where workers run.

A backend keeps one worker per (user, worker name) and reports it as a :class:`WorkerRecord`
snapshot. Implementations: ``local`` (subprocesses on this machine); ``kubernetes`` comes later
and must fit the same five calls. Callers have already authenticated ``user``; backends trust it
but still check the worker name, because it ends up in paths and resource names.
"""

from __future__ import annotations

import abc
import builtins
import json
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from rexec.errors import SpawnError, WorkerLimitReached
from rexec_spawner.backends.worker_status import is_python_minor
from rexec_spawner.names import WORKER_NAME_RULE, valid_worker_name

WorkerState = Literal["starting", "ready", "stopped", "failed"]
ACTIVE_STATES: frozenset[str] = frozenset({"starting", "ready"})


class ProgressEvent(NamedTuple):
    """One user-facing step of bringing a worker up, at ``time`` (seconds since the epoch)."""

    time: float
    message: str


@dataclass(frozen=True)
class WorkerRecord:
    """A snapshot of one worker, safe to hand to other tasks and threads.

    ``instance`` changes every time the backend starts a new worker for the same name, so a
    caller can tell "created now" from "already there".
    """

    user: str
    name: str
    state: WorkerState
    instance: str
    created_at: float
    progress: tuple[ProgressEvent, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class EnvironmentSpec:
    """A validated worker environment: the requirement strings as written, and their id.

    ``env_id`` is computed by ``rexec.requirements`` from the normalized requirements and the
    worker's Python version; the worker recomputes it and never trusts it blindly.
    """

    env_id: str
    requirements: tuple[str, ...]

    def worker_variables(self) -> dict[str, str]:
        """The environment variables every worker started with this environment receives."""
        return {
            "REXEC_ENV_ID": self.env_id,
            "REXEC_ENV_REQUIREMENTS": json.dumps(list(self.requirements)),
        }


class UserNotServed(SpawnError):
    """This backend does not serve the caller at all (answered with 403); the message says why
    and what to do."""


def check_worker_name(name: str) -> None:
    if not valid_worker_name(name):
        raise SpawnError(f"invalid worker name {name[:40]!r}: {WORKER_NAME_RULE}")


def check_worker_limit(active: builtins.list[str], name: str, limit: int) -> None:
    """Refuse a new worker ``name`` when the user's ``active`` workers already reach ``limit``
    (0: no limit). A worker that already runs is never refused."""
    if limit <= 0 or name in active or len(active) < limit:
        return
    shown = ", ".join(sorted(active))
    raise WorkerLimitReached(
        f"you already have {len(active)} workers ({shown}), the most one user may have; "
        f"delete one (DELETE /api/v1/workers/NAME) or reuse it"
    )


class WorkerBackend(abc.ABC):
    """Creates, reports and deletes the workers of each user."""

    @abc.abstractmethod
    async def ensure(self, user: str, name: str) -> WorkerRecord:
        """Return the user's active worker ``name``, starting a new one if there is none.

        Does not wait for the worker to be ready; poll :meth:`get` for progress.
        """

    @abc.abstractmethod
    async def get(self, user: str, name: str) -> WorkerRecord | None:
        """The user's worker ``name``, or None if this backend has none."""

    @abc.abstractmethod
    async def list(self, user: str) -> builtins.list[WorkerRecord]:
        """All workers of ``user``, in name order."""

    @abc.abstractmethod
    async def delete(self, user: str, name: str) -> bool:
        """Stop and forget the user's worker ``name``; False if there was none."""

    async def start(self) -> None:
        """Begin the backend's background work, in the event loop that serves requests. Called
        once, when the spawner starts; backends that need none keep this default."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every worker this backend started. Called once, at shutdown."""

    async def set_environment(
        self, user: str, name: str, environment: EnvironmentSpec | None
    ) -> None:
        """Remember the environment of the user's worker ``name`` (None: the base environment).

        Persisted outside memory, so a restarted spawner still knows it; every worker started
        for ``(user, name)`` afterwards gets :meth:`EnvironmentSpec.worker_variables`. Does not
        restart a running worker: the client switches it over the broker.
        """
        raise SpawnError(f"the {type(self).__name__} backend does not keep environments")

    async def get_environment(self, user: str, name: str) -> EnvironmentSpec | None:
        """The environment remembered for the user's worker ``name``, or None."""
        return None

    async def log(self, user: str, name: str, tail: int) -> str | None:
        """The last ``tail`` lines of the output of the user's worker ``name`` (its current
        run, or the last one if it stopped), or None if there is none."""
        raise SpawnError(
            f"the {type(self).__name__} backend cannot show worker logs; read them where the "
            "worker runs (e.g. `kubectl logs`)"
        )

    async def worker_python(self, user: str, name: str) -> str | None:
        """The Python version (``"3.11"``) the user's worker ``name`` runs or will run, which
        environment ids depend on; None if unknown. The default asks the running worker."""
        record = await self.get(user, name)
        version = record.info.get("python_minor") if record is not None else None
        # Reported by the worker, which runs user code: only a real version is believed.
        return version if is_python_minor(version) else None
