"""A small but real identity provider, for tests: token introspection over HTTP.

``GET /introspect`` reads ``Authorization: Bearer <token>``; ``POST /introspect`` reads JSON
``{"token": ...}`` (as deployed NDP identity providers do). Known tokens answer 200 with the
configured identity JSON, unknown ones 401. Extra routes answer the ways a broken provider does:
``/broken`` (500), ``/not-json`` (200 text), ``/no-user`` (200 ``{}``).

The provider counts the requests it answered and can be slowed down, so tests can prove that a
cache spared it a call and that a slow provider does not block other requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


class IdentityProvider:
    """Token table, request counter and delay, shared by the app and the test."""

    def __init__(self, tokens: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.tokens: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (tokens or {}).items()}
        self.delay = 0.0
        self._lock = threading.Lock()
        self._requests = 0

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def add(
        self, token: str, user: str, groups: list[str] | None = None, field: str = "sub"
    ) -> None:
        answer: dict[str, Any] = {field: user}
        if groups is not None:
            answer["groups"] = groups
        self.tokens[token] = answer

    async def _answer(self, token: str | None) -> JSONResponse:
        with self._lock:
            self._requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if token is None or token not in self.tokens:
            return JSONResponse({"detail": "invalid token"}, status_code=401)
        return JSONResponse(self.tokens[token])

    def make_app(self) -> FastAPI:
        app = FastAPI(title="test identity provider")

        @app.get("/introspect")
        async def introspect_get(request: Request) -> JSONResponse:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            return await self._answer(token if scheme.lower() == "bearer" and token else None)

        @app.post("/introspect")
        async def introspect_post(request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                body = None
            token = body.get("token") if isinstance(body, dict) else None
            return await self._answer(token if isinstance(token, str) else None)

        @app.api_route("/broken", methods=["GET", "POST"])
        async def broken() -> JSONResponse:
            return JSONResponse({"detail": "internal error"}, status_code=500)

        @app.api_route("/not-json", methods=["GET", "POST"])
        async def not_json() -> PlainTextResponse:
            return PlainTextResponse("<html>login page</html>")

        @app.api_route("/no-user", methods=["GET", "POST"])
        async def no_user() -> JSONResponse:
            return JSONResponse({"groups": ["x"]})

        @app.get("/")
        async def root() -> dict[str, str]:
            return {"status": "ok"}

        return app
