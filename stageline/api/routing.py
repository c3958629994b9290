"""The API's router: every GET route answers HEAD too (RFC 9110: a server that answers
GET on a path answers HEAD on it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

__all__ = ["Router"]


class Router(APIRouter):
    """An ``APIRouter`` whose GET routes also answer HEAD.

    Each GET route gets a HEAD twin: the same endpoint, dependencies and checks,
    so the same status and headers, left out of the OpenAPI schema (which lists
    the GET). The body is dropped on the way out (``middleware.HeadMiddleware``);
    an endpoint that would stream without end checks ``request.method`` itself.
    """

    def add_api_route(
        self, path: str, endpoint: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        super().add_api_route(path, endpoint, *args, **kwargs)
        if "GET" in (kwargs.get("methods") or ["GET"]):  # FastAPI's default is GET
            twin = {**kwargs, "methods": ["HEAD"], "include_in_schema": False}
            super().add_api_route(path, endpoint, *args, **twin)
