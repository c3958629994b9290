"""The projection's fold: a batch of log events in, every view's row changes out.

A batch of any length becomes at most one change per run, stage, dead letter
and entity, plus per-status counts of the runs it creates and the batch's last
position, so the view adapter writes each touched row once per batch. Pure:
no I/O, no clock; rebuilding from position 0 folds the same events again.

Events of unknown types are skipped, since other systems append their own
events to the same log; run lifecycle events count only on ``run-<id>`` streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from stageline.errors import InvalidEvent
from stageline.events import RecordedEvent, registry
from stageline.projections import dead_letters, entities, pipeline_configs, run_status
from stageline.projections.changes import Batch, RunStatusChanges

__all__ = ["HANDLERS", "fold"]

Handler = Callable[[Batch, str, int, RecordedEvent, dict[str, Any]], None]

HANDLERS: dict[str, tuple[Handler, bool]] = {
    **{topic: (h, True) for topic, h in run_status.HANDLERS.items()},
    **{topic: (h, False) for topic, h in dead_letters.HANDLERS.items()},
    **{topic: (h, False) for topic, h in entities.HANDLERS.items()},
    **{topic: (h, False) for topic, h in pipeline_configs.HANDLERS.items()},
}
"""Event type -> (handler, whether it only counts on a run stream).

A run-stream handler is given the run id, any other handler the stream name.
"""


def fold(events: Iterable[RecordedEvent]) -> RunStatusChanges:
    """Fold a batch of log events (oldest first) into the views' changes."""
    b = Batch()
    handlers, upcast = HANDLERS.get, registry.upcast
    prefix = run_status.RUN_STREAM_PREFIX
    cut = len(prefix)
    count, last = 0, None
    for e in events:
        count += 1
        last = e
        entry = handlers(e.type)
        if entry is None:
            continue
        handler, on_run = entry
        key = e.stream
        if on_run:
            if not key.startswith(prefix):
                continue
            key = key[cut:]
        try:
            # upcast the raw dict: converting whole payloads we barely read would cost more
            data = upcast(e.type, e.schema_version, e.data)
            handler(b, key, int(e.occurred_at.timestamp() * 1000), e, data)
        except (KeyError, TypeError, ValueError, InvalidEvent):
            # one bad payload must not stall the view forever: skip it, and say so
            b.out.rejected.append(e.position)
    out = b.out
    out.events, out.position = count, last.position if last is not None else 0
    counts: dict[str, int] = {}
    for run in out.runs.values():
        if run.created is not None:
            status = run.fields.get("status", run.created["status"])
            counts[status] = counts.get(status, 0) + 1
    out.counts = counts
    return out
