"""JSON request bodies: UTF-8 JSON text, holding only numbers JSON can carry (a finite float,
whatever field it is in).

``parse_json`` reads every route's body (``routing.Route``): one that is not UTF-8 (RFC
8259 allows no other encoding) or not JSON is a 400 saying what is wrong and where.

Python's JSON parser, which reads request bodies, takes ``NaN``, ``Infinity`` and
``-Infinity`` and reads a number beyond a float's range (``1e400``) as infinity.
None of them can be stored: the log's encoder writes them as ``null``, and a reader
expecting a number then fails. Every route depends on ``finite_numbers``, which
refuses such a body with 400 INVALID_ARGUMENT naming each place, before the route
runs, as the ingest channel refuses it before appending.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from stageline.api.errors import MalformedBody

__all__ = ["finite_numbers", "non_finite", "parse_json"]

# A body without one of these holds no number a float cannot carry: a float overflows
# only from a literal NaN or Infinity, a 3-digit exponent, or, with an exponent of at
# most 99, at least 210 digits before the point. Most bodies are then not walked.
_SUSPECT = re.compile(rb"NaN|Infinity|[eE][+-]?0*[1-9][0-9]{2}|[0-9]{200}")

MESSAGE = "must be a finite number: NaN, Infinity and numbers beyond a float's range are not JSON"


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON; ``MalformedBody`` naming the first byte that is not UTF-8,
    or why and where it is not JSON (line and column, counted in characters from 1)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(
            f"body is not UTF-8 at byte {exc.start}", "utf8_invalid", byte=exc.start
        ) from None
    try:
        # a byte order mark is not JSON, but RFC 8259 lets a parser ignore one
        return json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            "json_invalid",
            line=exc.lineno,
            column=exc.colno,
        ) from None


def non_finite(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every float in ``value`` (parsed JSON) that is NaN or infinite."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                yield where
        elif isinstance(item, dict):
            stack.extend(((*where, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*where, i), child) for i, child in reversed(list(enumerate(item))))


async def finite_numbers(request: Request) -> None:
    """Refuse a JSON body holding a non-finite number, each one named in ``details``."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return  # a route without a body model never parses one
    body = await request.body()  # read already (FastAPI reads the body first), so cached
    if not _SUSPECT.search(body):
        return
    try:
        parsed = await request.json()  # FastAPI's own parse of it, when it was JSON
    except (ValueError, MalformedBody):
        return  # sent as other than JSON: the body's model refuses it
    errors = [
        {"type": "finite_number", "loc": ("body", *where), "msg": MESSAGE, "input": None}
        for where in non_finite(parsed)
    ]
    if errors:
        raise RequestValidationError(errors)
