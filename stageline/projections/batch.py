"""Folding a batch of log events with a table of handlers: what every projection's fold shares.

A batch of any length becomes at most one change per row, so the writer
touches each row once per batch. Pure: no I/O, no clock; rebuilding from
position 0 folds the same events again.

Events of types the table does not know are skipped, since other systems
append their own events to the same log; a handler marked as a run handler
only sees events of ``run-<id>`` streams and is given the run id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from stageline.errors import InvalidEvent
from stageline.events import RecordedEvent, registry
from stageline.events.keys import run_stream
from stageline.projections.changes import Changes

__all__ = ["RUN_STREAM_PREFIX", "Handler", "Handlers", "fold_into"]

C = TypeVar("C", bound=Changes)

RUN_STREAM_PREFIX = run_stream("")

Handler = Callable[[C, str, int, RecordedEvent, dict[str, Any]], None]
"""``(changes, run id or stream, event time in ms, event, upcast payload)``."""

Handlers = Mapping[str, tuple[Handler[C], bool]]
"""Event type -> (handler, whether it only counts on a run stream)."""


def fold_into(changes: C, events: Iterable[RecordedEvent], handlers: Handlers[C]) -> C:
    """Fold a batch of log events (oldest first) into ``changes``, and return them.

    A payload a handler cannot read (``KeyError``, ``TypeError``,
    ``ValueError``, ``InvalidEvent``) is skipped and its position noted in
    ``changes.rejected``: one bad event must not stall a view forever.
    """
    upcast = registry.upcast
    # per type: its handler, whether on run streams only, and the version its payload
    # needs no upcasting from (an unregistered type's payload never does)
    table = {
        topic: (handler, on_run, cls.schema_version if (cls := registry.get(topic)) else 0)
        for topic, (handler, on_run) in handlers.items()
    }
    get = table.get
    prefix = RUN_STREAM_PREFIX
    cut = len(prefix)
    count, e = 0, None
    for count, e in enumerate(events, 1):  # noqa: B007 (read after the loop)
        entry = get(e.type)
        if entry is None:
            continue
        handler, on_run, current = entry
        key = e.stream
        if on_run:
            if not key.startswith(prefix):
                continue
            key = key[cut:]
        try:
            # the raw dict: converting whole payloads we barely read would cost more
            data = e.data
            if e.schema_version < current:
                data = upcast(e.type, e.schema_version, data)
            handler(changes, key, int(e.occurred_at.timestamp() * 1000), e, data)
        except (KeyError, TypeError, ValueError, InvalidEvent):
            changes.rejected.append(e.position)
    changes.events, changes.position = count, e.position if e is not None else 0
    return changes
