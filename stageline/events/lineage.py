"""Lineage in an exported log: which events led to an event (or to a stream's events),
following each one's ``causation_id``, and which events it led to in turn.

Pure: it reads the events it is given, twice (the first time to know every event's
cause, the second to keep the few it shows), so a log of any length takes the memory
of an id and a cause per event, not of its events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stageline.events.envelope import RecordedEvent
from stageline.events.keys import run_stream

__all__ = ["Lineage", "lineage"]


@dataclass(frozen=True)
class Lineage:
    """What ``lineage`` found, each list in log order."""

    of: str
    """The event id, stream or run id asked about."""
    start: list[RecordedEvent]
    """The event asked about, or the stream's events."""
    causes: list[RecordedEvent]
    """The events that led to ``start``: each one's cause, its cause, and so on."""
    effects: list[RecordedEvent]
    """The events ``start`` led to: those it caused, those they caused, and so on."""
    unknown_causes: list[str]
    """Causation ids along the way that name no event of the log (e.g. a publisher's own
    message ids)."""


def lineage(first: Iterable[RecordedEvent], again: Iterable[RecordedEvent], of: str) -> Lineage:
    """The lineage of ``of``: an event id, a stream name, or a run id (its ``run-<id>``
    stream), in a log read twice: ``first``, then ``again`` (the same events, in log
    order).

    An effect is found by following the log forwards, as the events were appended: an
    event whose cause comes after it in the log (only a publisher could write one) is not
    counted among its cause's effects. Returns a ``Lineage`` with empty ``start`` when
    the log has no such event or stream.
    """
    streams = {of, run_stream(of)}
    cause_of: dict[str, str | None] = {}
    start: set[str] = set()
    effects: set[str] = set()
    for event in first:
        eid = str(event.event_id)
        cause = event.causation_id
        cause_of[eid] = cause
        if eid == of or event.stream in streams:
            start.add(eid)
        elif cause is not None and (cause in start or cause in effects):
            effects.add(eid)
    causes: set[str] = set()
    unknown: list[str] = []
    for eid in start:
        cause = cause_of[eid]
        while cause is not None and cause not in start and cause not in causes:
            if cause not in cause_of:
                if cause not in unknown:
                    unknown.append(cause)
                break
            causes.add(cause)
            cause = cause_of[cause]
    del cause_of
    out: dict[str, list[RecordedEvent]] = {"start": [], "causes": [], "effects": []}
    if start:
        wanted = len(start) + len(causes) + len(effects)
        for event in again:
            eid = str(event.event_id)
            if eid in start:
                out["start"].append(event)
            elif eid in causes:
                out["causes"].append(event)
            elif eid in effects:
                out["effects"].append(event)
            else:
                continue
            wanted -= 1
            if not wanted:
                break
    return Lineage(of, out["start"], out["causes"], out["effects"], sorted(unknown))
