"""The spawner's worker-log API: ``GET /api/v1/workers/{name}/log?tail=N``.

Returns the last ``tail`` lines of the caller's worker's output (stdout and stderr) as
``text/plain``. The user comes from the token, so a user reads only their own workers' logs;
404 when the backend has no log for that worker, 503 when the backend cannot show logs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse

from rexec_spawner.app import _NAME_ERRORS, Caller, Name, Services

router = APIRouter(tags=["workers"])
MAX_TAIL = 10_000


@router.get(
    "/api/v1/workers/{name}/log",
    response_class=PlainTextResponse,
    responses={**_NAME_ERRORS, 404: {"description": "no log for this worker"}},
    summary="The last lines of the caller's worker's log",
)
async def get_worker_log(
    caller: Caller,
    name: Name,
    services: Services,
    tail: Annotated[int, Query(ge=1, le=MAX_TAIL, description="how many lines")] = 200,
) -> PlainTextResponse:
    text = await services.backend.log(caller.user, name, tail)
    if text is None:
        raise HTTPException(
            404, detail=f"no log for your worker {name!r}; it has not been started here"
        )
    return PlainTextResponse(text)
