"""The API's router: every GET route answers HEAD too (RFC 9110: a server that answers
GET on a path answers HEAD on it), every body is parsed as strict UTF-8 JSON, and a
query parameter that takes one value is refused when it is sent more than once."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi._compat import field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from stageline.api.bodies import parse_json

__all__ = ["JsonRequest", "Route", "Router", "repeated", "single_valued"]


class JsonRequest(Request):
    """A request whose JSON body is parsed by ``bodies.parse_json``: a 400 saying what is
    wrong and where when it is not UTF-8 or not JSON."""

    _parsed: Any

    async def json(self) -> Any:
        if not hasattr(self, "_parsed"):
            self._parsed = parse_json(await self.body())
        return self._parsed


def single_valued(dependant: Dependant) -> frozenset[str]:
    """The names of the query parameters that take one value, of a route's endpoint and of
    every dependency under it (a parameter typed as a list, such as the feed's ``type``,
    takes several)."""
    names: set[str] = set()
    todo = [dependant]
    while todo:
        current = todo.pop()
        # the test FastAPI itself makes to read a parameter as one value or as a list
        names.update(
            field.alias
            for field in current.query_params
            if not field_annotation_is_sequence(field.field_info.annotation)
        )
        todo.extend(current.dependencies)
    return frozenset(names)


def repeated(query: QueryParams, single: frozenset[str]) -> list[dict[str, Any]]:
    """A validation error per parameter of ``single`` that ``query`` holds more than once, in
    the order the query names them (FastAPI would keep the last value and drop the others)."""
    counts: dict[str, int] = {}
    for name, _ in query.multi_items():
        if name in single:
            counts[name] = counts.get(name, 0) + 1
    return [
        {
            "loc": ("query", name),
            "msg": f"given {n} times, but it takes one value: send it once",
            "type": "repeated",
        }
        for name, n in counts.items()
        if n > 1
    ]


class Route(APIRoute):
    """An ``APIRoute`` whose endpoint and dependencies get a ``JsonRequest``, and which
    answers 400 before they run when a query parameter that takes one value is repeated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        single = single_valued(self.dependant)

        async def handle(request: Request) -> Response:
            errors = repeated(request.query_params, single) if single else []
            if errors:
                raise RequestValidationError(errors)
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

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # every route starts with the prefix: a path without it matches none, and saying
        # so at once spares trying each route (FastAPI asks each router the app includes).
        # Include a Router without a prefix of its own, as create_app does: an include
        # prefix would stand before this one in the path, and no route would match
        if not get_route_path(scope).startswith(self.prefix):
            return Match.NONE, {}
        return super().matches(scope)

    def add_api_route(
        self, path: str, endpoint: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        super().add_api_route(path, endpoint, *args, **kwargs)
        if "GET" in (kwargs.get("methods") or ["GET"]):  # FastAPI's default is GET
            twin = {**kwargs, "methods": ["HEAD"], "include_in_schema": False}
            super().add_api_route(path, endpoint, *args, **twin)
