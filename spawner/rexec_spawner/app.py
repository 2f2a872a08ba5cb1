"""The spawner's HTTP API.

Every route except ``/healthz`` needs ``Authorization: Bearer <token>``; the user comes only from
the validated token, so a user sees and affects only their own workers. Token validation runs in
a thread pool on a cache miss, so a slow identity provider never blocks other requests.

Requests that carry a body are authenticated before any of it is read, and bodies are capped
(``REXEC_SPAWNER_MAX_BODY_BYTES``): see :mod:`rexec_spawner.body_guard`.

Status codes: 401 missing or refused token, 403 user not in an allowed group (or, on worker routes,
not a user the local backend serves: :mod:`rexec_spawner.backends.local_users`), 404 no such worker,
409 worker limit reached, 413 body over the cap, 422 invalid worker name, 503 identity provider
or spawner unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rexec.auth import Identity, make_validator
from rexec.credentials import load_key
from rexec.errors import ConfigError, SpawnError, WorkerLimitReached
from rexec.token_checks import TokenChecks
from rexec_spawner.activity import BrokerActivity
from rexec_spawner.authentication import IDENTITY_STATE_KEY, authenticate, client_address
from rexec_spawner.backends import WorkerBackend, make_backend
from rexec_spawner.backends.base import UserNotServed
from rexec_spawner.body_guard import BodyGuard
from rexec_spawner.config import SpawnerSettings
from rexec_spawner.culling import IdleCuller
from rexec_spawner.models import BrokerInfo, Deleted, ErrorMessage, Health, WhoAmI, WorkerStatus
from rexec_spawner.names import WORKER_NAME_RULE, valid_worker_name

log = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    description="a Rexec token: from `rexec up` (local stack) or your identity provider",
)
_AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorMessage, "description": "missing or refused token"},
    403: {
        "model": ErrorMessage,
        "description": "user not in an allowed group, or not one the local backend serves",
    },
    503: {"model": ErrorMessage, "description": "identity provider unavailable"},
}
_NAME_ERRORS: dict[int | str, dict[str, object]] = {
    **_AUTH_ERRORS,
    422: {"model": ErrorMessage, "description": "invalid worker name"},
}


def _load_signing_key(settings: SpawnerSettings) -> bytes:
    try:
        return load_key(settings.signing_key_path)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}. The spawner signs worker credentials with the key the broker checks them "
            "with: point REXEC_SIGNING_KEY_FILE (or --signing-key) at the broker's key; "
            "`rexec up` creates both for a local stack"
        ) from None


@dataclass
class _Services:
    """What the routes use, kept on ``app.state.rexec``."""

    backend: WorkerBackend
    checks: TokenChecks
    broker: BrokerInfo
    # PUT must tell "created" from "existed"; one lock per worker makes get-then-ensure atomic.
    put_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)


async def _services(request: Request) -> _Services:
    # Async on purpose: FastAPI runs sync dependencies in the thread pool, which slow identity
    # provider calls may be filling up; requests answered from the cache must not wait for it.
    services: _Services = request.app.state.rexec
    return services


async def _caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Identity:
    # The scheme object only documents the header in OpenAPI; the raw header gives precise errors.
    checked: Identity | None = getattr(request.state, IDENTITY_STATE_KEY, None)
    if checked is not None:
        return checked  # validated by the body guard before the body was read
    services: _Services = request.app.state.rexec
    return await authenticate(
        services.checks, request.headers.get("authorization"), client_address(request.scope)
    )


async def _worker_name(
    name: Annotated[str, Path(description=WORKER_NAME_RULE, examples=["default"])],
) -> str:
    if not valid_worker_name(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise HTTPException(422, detail=f"invalid worker name {shown!r}: {WORKER_NAME_RULE}")
    return name


Caller = Annotated[Identity, Depends(_caller)]
Name = Annotated[str, Depends(_worker_name)]
Services = Annotated[_Services, Depends(_services)]
router = APIRouter()


@router.get("/healthz", tags=["service"])
async def healthz() -> Health:
    return Health()


@router.get("/api/v1/whoami", tags=["service"], responses=_AUTH_ERRORS)
async def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(user=caller.user, groups=list(caller.groups))


@router.get("/api/v1/broker", tags=["service"], responses=_AUTH_ERRORS)
async def broker_info(caller: Caller, services: Services) -> BrokerInfo:
    return services.broker


@router.put(
    "/api/v1/workers/{name}",
    tags=["workers"],
    status_code=200,
    responses={
        **_NAME_ERRORS,
        201: {"model": WorkerStatus, "description": "created"},
        409: {
            "model": ErrorMessage,
            "description": "the caller already has the most workers one user may have "
            "(REXEC_MAX_WORKERS_PER_USER); delete one first",
        },
    },
    summary="Create the caller's worker, or get it if it exists",
)
async def put_worker(
    caller: Caller, name: Name, services: Services, response: Response
) -> WorkerStatus:
    lock = services.put_locks.setdefault((caller.user, name), asyncio.Lock())
    async with lock:
        before = await services.backend.get(caller.user, name)
        record = await services.backend.ensure(caller.user, name)
    if before is None or before.instance != record.instance:
        response.status_code = 201
    return WorkerStatus.from_record(record, services.broker)


@router.get("/api/v1/workers/{name}", tags=["workers"], responses=_NAME_ERRORS)
async def get_worker(caller: Caller, name: Name, services: Services) -> WorkerStatus:
    record = await services.backend.get(caller.user, name)
    if record is None:
        raise HTTPException(
            404,
            detail=f"you have no worker named {name!r}; create it with PUT /api/v1/workers/{name}",
        )
    return WorkerStatus.from_record(record, services.broker)


@router.get("/api/v1/workers", tags=["workers"], responses=_AUTH_ERRORS)
async def list_workers(caller: Caller, services: Services) -> list[WorkerStatus]:
    records = await services.backend.list(caller.user)
    return [WorkerStatus.from_record(record, services.broker) for record in records]


@router.delete("/api/v1/workers/{name}", tags=["workers"], responses=_NAME_ERRORS)
async def delete_worker(caller: Caller, name: Name, services: Services) -> Deleted:
    return Deleted(deleted=await services.backend.delete(caller.user, name))


async def _spawn_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _not_served(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=403)


async def _worker_limit(_: Request, exc: Exception) -> JSONResponse:
    # Not an outage like other spawn errors: the caller can fix it by deleting a worker.
    return JSONResponse({"detail": str(exc)}, status_code=409)


def create_app(settings: SpawnerSettings, backend: WorkerBackend | None = None) -> FastAPI:
    """The spawner application. Raises ``ConfigError`` at once for unusable settings."""
    validator = make_validator(settings.auth)
    checks = TokenChecks(validator, name="rexec-spawner-auth")
    workers = (
        backend if backend is not None else make_backend(settings, _load_signing_key(settings))
    )
    broker = BrokerInfo(url=settings.broker_url, public_key=settings.broker_public_key)

    culler = None
    if settings.idle_timeout > 0:
        activity = BrokerActivity(
            settings.activity_url, settings.broker_public_key, _load_signing_key(settings)
        )
        culler = IdleCuller(workers, activity, settings.idle_timeout, settings.cull_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await workers.start()
        culling = asyncio.create_task(culler.run(), name="rexec-culler") if culler else None
        try:
            yield
        finally:
            if culling is not None:
                culling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await culling
                await asyncio.to_thread(culler.activity.close)  # type: ignore[union-attr]
            await workers.close()
            checks.close()
            validator.close()

    app = FastAPI(
        title="Rexec spawner",
        version="1",
        description="Provisions, reports and deletes per-user Rexec workers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.rexec = _Services(workers, checks, broker)
    app.add_exception_handler(SpawnError, _spawn_error)
    app.add_exception_handler(WorkerLimitReached, _worker_limit)
    app.add_exception_handler(UserNotServed, _not_served)
    app.add_middleware(BodyGuard, checks=checks, max_body_bytes=settings.max_body_bytes)
    app.include_router(router)
    from rexec_spawner.environments import router as environments  # imports this module

    app.include_router(environments)
    from rexec_spawner.worker_logs import router as worker_logs  # imports this module

    app.include_router(worker_logs)
    return app
