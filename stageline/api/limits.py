"""Bounds on numbers and nesting taken from requests."""

from typing import Any

MAX_POSITION = 2**53 - 1
"""Largest log position or stream version a request may name (Lua numbers are doubles,
Redis stream ids 64-bit): a larger one is a 400, never a server error."""

MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays in a request's free-form JSON (run metadata,
event data, stage params): deeper is a 400, before any encoder meets its own limit."""


def nests_within(value: Any, levels: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` holds objects and arrays at most ``levels`` deep (``{}`` is one)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return True
    # stops one level past the limit: never deeper than that, whatever the input
    return levels > 0 and all(nests_within(child, levels - 1) for child in children)
