"""The JSON bodies of the spawner's HTTP API (they also make the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from rexec_spawner.backends.base import WorkerRecord


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class WhoAmI(BaseModel):
    user: str = Field(description="the user the token belongs to")
    groups: list[str] = Field(default_factory=list, description="the user's groups")


class BrokerInfo(BaseModel):
    url: str = Field(description="broker frontend for clients, e.g. tcp://host:5559")
    public_key: str | None = Field(
        default=None, description="the broker's CurveZMQ public key (Z85); null when unencrypted"
    )


class ProgressItem(BaseModel):
    time: float = Field(description="seconds since the epoch")
    message: str


class WorkerStatus(BaseModel):
    user: str
    name: str
    state: Literal["starting", "ready", "stopped", "failed"] = Field(
        description="'ready' once the worker is registered with the broker"
    )
    progress: list[ProgressItem] = Field(description="what happened so far, oldest first")
    info: dict[str, Any] = Field(description="what the worker reports: pid, python, dill...")
    error: str | None = Field(description="why the worker failed, and what to check")
    created_at: float = Field(description="when this worker was started (seconds since epoch)")
    broker: BrokerInfo

    @classmethod
    def from_record(cls, record: WorkerRecord, broker: BrokerInfo) -> WorkerStatus:
        return cls(
            user=record.user,
            name=record.name,
            state=record.state,
            progress=[
                ProgressItem(time=event.time, message=event.message) for event in record.progress
            ],
            info=record.info,
            error=record.error,
            created_at=record.created_at,
            broker=broker,
        )


class Deleted(BaseModel):
    deleted: bool = Field(description="false if there was no such worker")


class ErrorMessage(BaseModel):
    detail: str = Field(description="what went wrong and what to do next")


class EnvironmentRequest(BaseModel):
    requirements: str | list[str] = Field(
        description="the requirements file's text, or its lines; one PEP 508 requirement per line",
        examples=["numpy>=1.26\npandas<3\n"],
    )


class EnvironmentStatus(BaseModel):
    env_id: str = Field(description="hash of the normalized requirements and the Python version")
    requirements: list[str] = Field(description="the accepted lines, exactly as written")
    python: str = Field(description="the worker's Python minor version the id was computed for")
    base: bool = Field(default=False, description="true for the base environment (no packages)")


class RequirementsRejected(BaseModel):
    detail: str = Field(description="the refused line, its number and the reason")
    line_number: int
    line: str
    reason: str
