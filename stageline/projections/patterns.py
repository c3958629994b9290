"""The ``patterns`` projection's pure fold: one row per pattern id, its state and match stats.

A pattern's row is created by ``PatternAdded`` (or by an ``OntologyImported``
naming it) on the workspace's ontology stream, or by a ``PatternMatched`` on a
run stream when the workspace holds no such pattern (a global one matched
here: the event carries its name, type and source). ``PatternAdded`` sets
the pattern's state; ``PatternPromoted``/``PatternDemoted`` its source and
confidence; ``PatternRemoved`` makes it inactive; an ``OntologyImported``
sets every pattern of its document and makes every other one of the
workspace's own (not global) patterns inactive. Match stats are additive
(``matches``, ``runs_matched``) or min/max (``first_seen``, ``last_seen``),
so they add up across batches.

How a batch's changes compose with what the graph holds (``PatternChange``):
``created`` applies to a new row only, ``pre`` only to a row that existed
before the batch (what the batch set before anything created the row),
``fields`` always (last writer wins). ``deactivate`` is what an import did to
a row whose ``is_global`` the batch cannot know: inactive unless global.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stageline.events import RecordedEvent
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.ontology.events import (
    OntologyImported,
    PatternAdded,
    PatternDemoted,
    PatternMatched,
    PatternMatchRetracted,
    PatternPromoted,
    PatternRemoved,
)
from stageline.ontology.model import REMOVED_BY_HAND, Document, pattern_id
from stageline.projections.batch import Handler, fold_into
from stageline.projections.changes import Changes

__all__ = [
    "IMPORT_REASON",
    "PATTERN_FIELDS",
    "PatternChange",
    "PatternChanges",
    "fold",
]

PATTERN_FIELDS = (
    "name",
    "entity_type",
    "source",
    "confidence",
    "is_global",
    "active",
    "removed_reason",
    "created_at",
)
"""Every property ``created``, ``pre`` or ``fields`` may set on a ``Pattern`` row."""

IMPORT_REASON = REMOVED_BY_HAND
"""Why an import left a pattern inactive (as the ontology's own fold records it)."""


@dataclass(slots=True)
class PatternChange:
    """What one batch does to one pattern's row."""

    id: str
    created: dict[str, Any] | None = None
    """The row as its first creating event in the batch made it: applied to a new row only."""
    pre: dict[str, Any] = field(default_factory=dict)
    """Set before anything in the batch created the row: applied only if it existed already."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Set once the row surely existed: applied always, after ``created`` and ``pre``."""
    deactivate: str | None = None
    """``"always"`` or ``"pre"`` (only if the row existed before the batch): an import made
    the row inactive, unless it is a global pattern's, at its place among the changes
    (after ``created``/``pre``, before ``fields``)."""
    matches: int = 0
    runs_matched: int = 0
    first_seen: int | None = None
    last_seen: int | None = None

    def set(self, **values: Any) -> None:
        """Set fields as of this point of the batch (``pre`` while nothing created the row)."""
        (self.pre if self.created is None else self.fields).update(values)
        if "active" in values:
            self.deactivate = None

    def create(self, at: int, **values: Any) -> None:
        """The row exists from here on: made with ``values`` if it did not."""
        if self.created is None:
            self.created = {"created_at": at, **values}


@dataclass(slots=True)
class PatternChanges(Changes):
    """The ``patterns`` projection's changes: one change per pattern id the batch touched."""

    patterns: dict[str, PatternChange] = field(default_factory=dict)
    imported: bool = False
    """The batch holds an import: every row it does not touch, if active and the
    workspace's own, becomes inactive (``IMPORT_REASON``)."""
    kept: frozenset[str] | None = None
    """The ids the batch's last import kept (its document's patterns)."""

    @property
    def has_rows(self) -> bool:
        return bool(self.patterns) or self.imported

    def pattern(self, pid: str) -> PatternChange:
        change = self.patterns.get(pid)
        if change is None:
            change = self.patterns[pid] = PatternChange(pid)
            if self.kept is not None and pid not in self.kept:
                # an import earlier in the batch made the row (if it existed) inactive
                change.deactivate = "pre"
        return change


PatternHandler = Handler[PatternChanges]


def _added(b: PatternChanges, at: int, d: dict[str, Any]) -> None:
    name, entity_type, source = d["name"], d["entity_type"], d["source"]
    if not all(isinstance(v, str) for v in (name, entity_type, source, d["pattern_id"])):
        raise TypeError("pattern_id, name, entity_type and source must be strings")
    change = b.pattern(d["pattern_id"])
    change.create(at)
    change.set(
        name=name,
        entity_type=entity_type,
        source=source,
        confidence=float(d["confidence"]),
        is_global=bool(d.get("is_global", False)),
        active=True,
        removed_reason=None,
    )


def _on_ontology(handle: Any) -> PatternHandler:
    def handler(
        b: PatternChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]
    ) -> None:
        if stream == ONTOLOGY_STREAM:
            handle(b, at, d)

    return handler


def _moved(b: PatternChanges, at: int, d: dict[str, Any], source: str) -> None:
    b.pattern(str(d["pattern_id"])).set(source=source, confidence=float(d["confidence"]))


def _removed(b: PatternChanges, at: int, d: dict[str, Any]) -> None:
    b.pattern(str(d["pattern_id"])).set(
        active=False, removed_reason=d.get("reason") or REMOVED_BY_HAND
    )


def _imported(b: PatternChanges, at: int, d: dict[str, Any]) -> None:
    document = msgspec.convert(d["document"], Document)
    rows = [(pattern_id(p.name, p.entity_type), p) for p in document.patterns]
    kept = frozenset(pid for pid, _ in rows)
    for pid, change in b.patterns.items():
        if pid in kept:
            continue
        if "is_global" in change.fields:  # added earlier in the batch: its state is known
            if not change.fields["is_global"] and change.fields.get("active"):
                change.set(active=False, removed_reason=IMPORT_REASON)
        else:
            change.deactivate = "pre" if change.created is None else "always"
    for pid, p in rows:
        added = {
            "pattern_id": pid,
            "name": p.name,
            "entity_type": p.entity_type,
            "source": p.source,
            "confidence": p.confidence,
        }
        _added(b, at, added)
    b.imported, b.kept = True, kept


def _matched(b: PatternChanges, run: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    mentions = d["mentions"]
    if not isinstance(mentions, int):
        raise TypeError("mentions must be an integer")
    change = b.pattern(str(d["pattern_id"]))
    change.create(
        at,
        name=str(d["name"]),
        entity_type=str(d["entity_type"]),
        source=str(d["source"]),
        confidence=None,
        is_global=bool(d["is_global"]),
        active=True,
        removed_reason=None,
    )
    change.matches += mentions
    change.runs_matched += 1
    change.first_seen = at if change.first_seen is None else min(change.first_seen, at)
    change.last_seen = at if change.last_seen is None else max(change.last_seen, at)


def _retracted(b: PatternChanges, run: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    mentions = d["mentions"]
    if not isinstance(mentions, int):
        raise TypeError("mentions must be an integer")
    change = b.pattern(str(d["pattern_id"]))
    change.matches -= mentions
    change.runs_matched -= 1


HANDLERS: dict[str, tuple[PatternHandler, bool]] = {
    PatternAdded.topic: (_on_ontology(_added), False),
    PatternPromoted.topic: (_on_ontology(lambda b, at, d: _moved(b, at, d, "promoted")), False),
    PatternDemoted.topic: (_on_ontology(lambda b, at, d: _moved(b, at, d, "discovered")), False),
    PatternRemoved.topic: (_on_ontology(_removed), False),
    OntologyImported.topic: (_on_ontology(_imported), False),
    PatternMatched.topic: (_matched, True),
    PatternMatchRetracted.topic: (_retracted, True),
}
"""Event type -> (handler, run streams only?). Ontology events count on the ontology stream only."""


def fold(events: Iterable[RecordedEvent]) -> PatternChanges:
    """Fold a batch of log events (oldest first) into the ``patterns`` changes."""
    return fold_into(PatternChanges(), events, HANDLERS)
