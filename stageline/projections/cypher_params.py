"""The ``CYPHER name=value ...`` header that carries a query's parameters. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["cypher_params"]

_KEYS: dict[bytes, bytes] = {}
"""Map keys as JSON writes them -> as Cypher does (``_unquote_keys`` checks each new one once)."""


def _cypher_key(key: bytes) -> bytes | None:
    if key.replace(b"_", b"a").isalnum() and key.isascii() and not key[:1].isdigit():
        return key
    if not key or b"\\" in key or b"`" in key:  # a JSON escape, or what a Cypher name cannot hold
        return None
    return b"`" + key + b"`"


_AMBIGUOUS = b"[{,:"
"""What may precede a string's opening quote: a key that is empty or ends with one of
these is never kept in ``_KEYS``."""


def _key(string: bytes) -> bytes | None:
    key = _cypher_key(string)
    if key is not None and string[-1:] not in _AMBIGUOUS:
        _KEYS[string] = key
    return key


def _unquote_keys(text: bytes) -> bytes | None:
    """JSON ``text`` with its map keys as Cypher reads them (``{"status":1}`` ->
    ``{status:1}``, ``{"a.b":1}`` -> ``{`a.b`:1}``); None if a key holds a JSON escape
    or a backtick.

    In compact JSON a key ends with ``":``, and without a backslash no string holds a
    quote: the text is cut at each ``":`` (a C-speed split rather than a step per
    string) and the key taken after the last quote before it. A cut can also be the
    opening quote of a string starting with ``:``, after one of ``[{,:`` or at the
    start: what precedes it then reads as an empty key or one ending with one of those,
    which ``_KEYS`` never holds, and such a text is read string by string instead.
    """
    if b"\\" in text:
        return _unquote_keys_by_string(text)
    parts = text.split(b'":')
    last = parts.pop()
    out: list[bytes] = []
    for part in parts:
        head, _, string = part.rpartition(b'"')
        key = _KEYS.get(string)
        if key is None:
            if string[-1:] in _AMBIGUOUS:
                return _unquote_keys_by_string(text)
            key = _key(string)
            if key is None:
                return None
        out += (head, key, b":")
    out.append(last)
    return b"".join(out)


def _unquote_keys_by_string(text: bytes) -> bytes | None:
    """``_unquote_keys`` for any text: it is cut at each quote; a quote after an odd run
    of backslashes is escaped, inside a string. A string is a key where the text after
    it starts with ``:``."""
    parts = text.split(b'"')
    out = [parts[0]]
    i, end = 1, len(parts) - 1
    while i < end:
        string = parts[i]
        while (len(string) - len(string.rstrip(b"\\"))) % 2:  # an escaped quote: read on
            i += 1
            string += b'"' + parts[i]
        after = parts[i + 1]
        if after[:1] == b":":
            key = _KEYS.get(string) or _key(string)
            if key is None:
                return None
            out += (key, after)
        else:
            out += (b'"', string, b'"', after)
        i += 2
    return b"".join(out)


def cypher_params(params: Mapping[str, Any]) -> str:
    """The ``CYPHER name=value ...`` header that carries a query's parameters.

    JSON is valid Cypher once map keys lose their quotes, and encoding it is
    ~10x faster than the client's own encoder on big batches. Values with map
    keys that are not plain names, or strings that JSON would ``\\u``-escape,
    take the client's encoder.
    """
    parts = ["CYPHER"]
    for name, value in params.items():
        encoded = msgspec.json.encode(value)
        # inside JSON strings '"' is always escaped: '{"' opens a map
        text = _unquote_keys(encoded) if b'{"' in encoded else encoded
        if text is None or b"\\u" in text:
            # imported here: the folds' modules import this one, and load no client
            from falkordb.helpers import stringify_param_value

            parts.append(f"{name}={stringify_param_value(value)}")
        else:
            parts.append(f"{name}={text.decode()}")
    return " ".join(parts) + " " if params else ""
