"""Keyset cursors of the views' lists: opaque to clients, checked when they come back. Pure.

A list in the order of a key (most mentioned first, then by name, ...) is read a
page at a time: the key of a page's last row, sent back as ``cursor``, starts the
next page just after that row, wherever the rows before it moved meanwhile. The
cursor is the key as a JSON array in unpadded base64url, for clients to pass back
as it is. One that is not exactly the encoding of a key of the list's shape was
not given by this server: ``InvalidArgument("invalid cursor")``.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated

import msgspec

from stageline.errors import InvalidArgument

__all__ = ["Key", "decode", "encode"]

Key = tuple[int, str, str]
"""A row's place in a list of counts: ``(count, name, tie-break)``, the count first (most
first), then by name, then by what tells two rows of one name apart (an entity's type,
a pattern's id). No two rows of a list share a key."""

_KEY = tuple[Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)], str, str]
"""A ``Key`` whose count is an integer FalkorDB holds."""

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def encode(key: Key) -> str:
    """The cursor of the page that starts after the row whose key is ``key``."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).rstrip(b"=").decode("ascii")


def decode(cursor: str) -> Key:
    """The key ``cursor`` holds; ``InvalidArgument`` unless ``cursor`` is what ``encode``
    makes of a key."""
    try:
        if not _BASE64URL.fullmatch(cursor):
            raise ValueError("not base64url")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key: Key = msgspec.json.decode(raw, type=_KEY, strict=True)
        if encode(key) != cursor:  # another spelling of a key: not one this server gave
            raise ValueError("not canonical")
    except (ValueError, msgspec.MsgspecError):
        raise InvalidArgument("invalid cursor", cursor=cursor) from None
    return key
