"""The spawner's environment API: which packages the caller's worker runs with.

``PUT /api/v1/workers/{name}/environment`` takes a requirements file (its text, or a list of
lines), checks every line (``rexec.requirements``: PEP 508 only unless the operator allows
installer options or URLs), and records the environment with the backend, which gives it to every
worker it starts for that name. A refused line is a 422 naming the line, its number and the
reason; nothing is installed or run here. The running worker is switched by the client over the
broker (the ``environment`` request), which builds the environment once and reuses it.

``GET`` returns the recorded environment (404 when the worker runs the base one); ``DELETE``
goes back to the base environment.
"""

from __future__ import annotations

import sys

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from rexec.requirements import (
    BASE_ENVIRONMENT,
    RequirementsError,
    environment_id,
    parse_requirements,
)
from rexec_spawner.app import _NAME_ERRORS, Caller, Name, Services
from rexec_spawner.backends import EnvironmentSpec
from rexec_spawner.models import (
    EnvironmentRequest,
    EnvironmentStatus,
    ErrorMessage,
    RequirementsRejected,
)

router = APIRouter(tags=["environments"])
MAX_REQUIREMENTS_BYTES = 64 * 1024


async def _python_of(services: Services, user: str, name: str) -> str:
    version = await services.backend.worker_python(user, name)
    return version or "{}.{}".format(*sys.version_info[:2])


@router.put(
    "/api/v1/workers/{name}/environment",
    responses={
        **_NAME_ERRORS,
        413: {"model": ErrorMessage, "description": "requirements or request body too large"},
        422: {"model": RequirementsRejected, "description": "a requirements line was refused"},
    },
    response_model=EnvironmentStatus,
    summary="Set the packages of the caller's worker",
)
async def put_environment(
    body: EnvironmentRequest, caller: Caller, name: Name, services: Services, request: Request
) -> EnvironmentStatus | JSONResponse:
    text = body.requirements
    size = len(text) if isinstance(text, str) else sum(len(line) + 1 for line in text)
    if size > MAX_REQUIREMENTS_BYTES:
        raise HTTPException(
            413, detail=f"requirements over {MAX_REQUIREMENTS_BYTES} bytes; list fewer packages"
        )
    try:
        parsed = parse_requirements(text, request.app.state.settings.requirements_policy)
    except RequirementsError as exc:
        rejected = RequirementsRejected(
            detail=str(exc), line_number=exc.line_number, line=exc.line, reason=exc.reason
        )
        return JSONResponse(rejected.model_dump(), status_code=422)
    python = await _python_of(services, caller.user, name)
    env_id = environment_id(parsed, python)
    if env_id == BASE_ENVIRONMENT:
        await services.backend.set_environment(caller.user, name, None)
        return EnvironmentStatus(env_id=env_id, requirements=[], python=python, base=True)
    spec = EnvironmentSpec(env_id, tuple(parsed.lines()))
    await services.backend.set_environment(caller.user, name, spec)
    return EnvironmentStatus(env_id=env_id, requirements=list(spec.requirements), python=python)


@router.get(
    "/api/v1/workers/{name}/environment",
    responses={**_NAME_ERRORS, 404: {"model": ErrorMessage, "description": "base environment"}},
    summary="The packages recorded for the caller's worker",
)
async def get_environment(caller: Caller, name: Name, services: Services) -> EnvironmentStatus:
    spec = await services.backend.get_environment(caller.user, name)
    if spec is None:
        raise HTTPException(
            404,
            detail=f"worker {name!r} runs the base environment; set one with PUT "
            f"/api/v1/workers/{name}/environment",
        )
    python = await _python_of(services, caller.user, name)
    return EnvironmentStatus(
        env_id=spec.env_id, requirements=list(spec.requirements), python=python
    )


@router.delete(
    "/api/v1/workers/{name}/environment",
    responses=_NAME_ERRORS,
    summary="Go back to the base environment",
)
async def delete_environment(caller: Caller, name: Name, services: Services) -> EnvironmentStatus:
    await services.backend.set_environment(caller.user, name, None)
    python = await _python_of(services, caller.user, name)
    return EnvironmentStatus(env_id=BASE_ENVIRONMENT, requirements=[], python=python, base=True)
