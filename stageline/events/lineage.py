"""Lineage in an exported log: which events led to an event (or to a stream's events),
following each one's ``causation_id``, and which events it led to in turn.

Besides its cause, an event of stageline's that reverses or closes earlier events
names them in its data, and is followed from them too: a ``StageCompensated`` or
``EffectCompensated`` the effects it compensates (an undo's have no cause in the log:
a user asked for them), a ``DeadLetterRedriven`` or ``DeadLetterDiscarded`` the dead
letter it closes (the ``RunFailed`` or ``DeadLettered`` event of that id).

Pure: it reads the events it is given, twice (the first time to know every event's
causes, the second to keep the few it shows), so a log of any length takes the memory
of an id and a cause per event, not of its events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stageline.events.envelope import RecordedEvent
from stageline.events.keys import run_stream

__all__ = ["Lineage", "lineage", "links"]

_REVERSING = frozenset({"StageCompensated", "EffectCompensated"})
_CLOSING = frozenset({"DeadLetterRedriven", "DeadLetterDiscarded"})


def links(event: RecordedEvent) -> tuple[str, ...]:
    """The events ``event`` follows from: its cause first, then those its data names
    (the effects a compensation reverses, the dead letter a redrive or discard closes)."""
    out: tuple[str, ...] = () if event.causation_id is None else (event.causation_id,)
    named: object = None
    if event.type in _REVERSING:
        named = event.data.get("compensates")
    elif event.type in _CLOSING:
        named = event.data.get("dead_letter")
    if isinstance(named, str):
        named = [named]
    if isinstance(named, list):
        out += tuple(n for n in named if isinstance(n, str) and n not in out)
    return out


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
    causes_of: dict[str, tuple[str, ...]] = {}
    start: set[str] = set()
    effects: set[str] = set()
    for event in first:
        eid = str(event.event_id)
        parents = links(event)
        causes_of[eid] = parents
        if eid == of or event.stream in streams:
            start.add(eid)
        elif any(p in start or p in effects for p in parents):
            effects.add(eid)
    causes: set[str] = set()
    unknown: list[str] = []
    todo = [p for eid in start for p in causes_of[eid]]
    while todo:
        cause = todo.pop()
        if cause in start or cause in causes:
            continue
        if cause not in causes_of:
            if cause not in unknown:
                unknown.append(cause)
            continue
        causes.add(cause)
        todo.extend(causes_of[cause])
    del causes_of
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
