"""The API's router: every GET route answers HEAD too (RFC 9110: a server that answers
GET on a path answers HEAD on it), and every body is parsed as strict UTF-8 JSON."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from stageline.api.bodies import parse_json

__all__ = ["JsonRequest", "Route", "Router"]


class JsonRequest(Request):
    """A request whose JSON body is parsed by ``bodies.parse_json``: a 400 saying what is
    wrong and where when it is not UTF-8 or not JSON."""

    _parsed: Any

    async def json(self) -> Any:
        if not hasattr(self, "_parsed"):
            self._parsed = parse_json(await self.body())
        return self._parsed


class Route(APIRoute):
    """An ``APIRoute`` whose endpoint and dependencies get a ``JsonRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return handle


class Router(APIRouter):
    """An ``APIRouter`` of ``Route``s whose GET routes also answer HEAD.

    Each GET route gets a HEAD twin: the same endpoint, dependencies and checks,
    so the same status and headers, left out of the OpenAPI schema (which lists
    the GET). The body is dropped on the way out (``middleware.HeadMiddleware``);
    an endpoint that would stream without end checks ``request.method`` itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("route_class", Route)
        super().__init__(*args, **kwargs)

    def add_api_route(
        self, path: str, endpoint: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        super().add_api_route(path, endpoint, *args, **kwargs)
        if "GET" in (kwargs.get("methods") or ["GET"]):  # FastAPI's default is GET
            twin = {**kwargs, "methods": ["HEAD"], "include_in_schema": False}
            super().add_api_route(path, endpoint, *args, **twin)
