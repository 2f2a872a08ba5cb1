"""The backend interface: where workers run.

A backend keeps one worker per (user, worker name) and reports it as a :class:`WorkerRecord`
snapshot. Implementations: ``local`` (subprocesses on this machine); ``kubernetes`` comes later
and must fit the same five calls. Callers have already authenticated ``user``; backends trust it
but still check the worker name, because it ends up in paths and resource names.
"""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from rexec.errors import SpawnError
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


def check_worker_name(name: str) -> None:
    if not valid_worker_name(name):
        raise SpawnError(f"invalid worker name {name[:40]!r}: {WORKER_NAME_RULE}")


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

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every worker this backend started. Called once, at shutdown."""
