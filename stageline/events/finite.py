"""Numbers JSON cannot carry (NaN, ±infinity), found before they are stored.

The log's msgpack keeps them, but every JSON reader of it (the HTTP API, an
export) gets ``null`` where a number was written. Stage results and appended
events are checked with this one walker. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

__all__ = ["nonfinite"]

_CONTAINERS = (float, dict, list, tuple, msgspec.Struct)


def nonfinite(value: object, name: str, of: str = "") -> str | None:
    """Where in ``value`` (called ``name``, e.g. ``output``) the first float that is not
    finite sits, said for an error: ``a number JSON cannot carry (nan) at output.x[2]{of}:
    NaN and infinity cannot be stored``; None if there is none.

    Only floats and containers (dicts, lists, tuples, msgspec structs such as events) are
    looked into, so a value without them costs one ``isinstance`` per item. A value nested
    too deeply raises ``RecursionError``."""
    where = _walk(value)
    if where is None:
        return None
    return (
        f"a number JSON cannot carry ({where[0]}) at {name}{''.join(reversed(where[1:]))}"
        f"{of}: NaN and infinity cannot be stored"
    )


def _walk(value: object) -> list[str] | None:
    """The first float in ``value`` that is not finite, then the path to it innermost first
    (``[".b", "[2]"]`` for ``x[2].b``); None if there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else [repr(value)]
    if isinstance(value, dict):
        items: Iterable[tuple[object, object]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    elif isinstance(value, msgspec.Struct):
        items = ((name, getattr(value, name)) for name in value.__struct_fields__)
    else:
        return None
    for key, item in items:
        if isinstance(item, _CONTAINERS):
            found = _walk(item)
            if found is not None:
                found.append(f"[{key}]" if isinstance(key, int) else f".{key}")
                return found
    return None
