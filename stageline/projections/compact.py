"""FalkorDB's compact reply to a read, decoded. Pure.

``GRAPH.RO_QUERY ... --compact`` answers ``[header, rows, statistics]``, each
cell of a row a ``[type, value]`` pair. The views' reads return scalars, lists
and maps only (never a node, an edge or a path), and decoding those here, with
no graph schema and no coroutine per value, costs a fraction of what the
``falkordb`` client's generic parser does: a run of five stages, ~50 values,
took that parser about a third of a ``GET /v1/runs/{id}``'s time in the views.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UnexpectedValue", "decode", "rows"]

# FalkorDB's ResultSetScalarTypes, the ones a view's read returns
_NULL, _STRING, _INTEGER, _BOOLEAN, _DOUBLE, _ARRAY, _MAP = 1, 2, 3, 4, 5, 6, 10


class UnexpectedValue(ValueError):
    """A reply held a value of a type no view's read returns (a node, a point, ...)."""


def decode(cell: list[Any]) -> Any:
    """One ``[type, value]`` cell as Python: None, str, int, bool, float, list or dict."""
    kind, value = cell
    if kind == _STRING:
        return value.decode() if isinstance(value, bytes) else value
    if kind == _INTEGER:
        return value
    if kind == _NULL:
        return None
    if kind == _DOUBLE:
        return float(value)
    if kind == _BOOLEAN:
        return value in (b"true", "true")
    if kind == _ARRAY:
        return [decode(item) for item in value]
    if kind == _MAP:
        keys = value[0::2]
        return {
            (k.decode() if isinstance(k, bytes) else k): decode(v)
            for k, v in zip(keys, value[1::2], strict=True)
        }
    raise UnexpectedValue(f"a view's read returned a value of FalkorDB type {kind}")


def rows(reply: list[Any]) -> list[list[Any]]:
    """The rows of a compact reply, every cell decoded (none for a query that returns none).

    An error the query met as it ran comes back inside the reply: it is raised.
    """
    for part in (reply[0], reply[-1]):
        if isinstance(part, Exception):
            raise part
    if len(reply) < 3:  # only the statistics: the query has no RETURN
        return []
    return [[decode(cell) for cell in row] for row in reply[1]]
