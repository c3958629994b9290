"""The ``ontology`` projection's pure fold: how far a workspace's ontology has converged.

Three kinds of rows:

- one per entity type (``name``, ``status``, ``proposed_at``), following the
  ontology stream: ``EntityTypeAdded`` (its status), ``EntityTypeProposed``
  (provisional, if new), ``EntityTypeConfirmed``/``Demoted``/``Rejected``, and
  ``OntologyImported`` (exactly the document's types; the others deleted);
- the counters, all additive: ``runs`` (``RunCompleted`` + ``RunFailed`` on run
  streams), ``mentions`` and ``mentions_established`` (``PatternMatched``
  mentions net of ``PatternMatchRetracted``, split by ``established``),
  ``patterns_promoted`` (promotions minus demotions), ``types_proposed``,
  ``types_confirmed`` (confirmations minus demotions), ``types_rejected``;
- the discovery curve: each pattern added as ``discovered`` (once per pattern
  id, ever) and each ``EntityTypeProposed`` falls in the bucket of 10 runs the
  runs counter stood in at its log position. A batch cannot know the stored
  counter, so the fold gives each its ``runs`` offset within the batch (runs
  ended before it in the batch) and the writer adds the stored counter.

Type rows compose like the ``patterns`` rows: ``created`` for a new row only,
``pre`` only for a row that existed before the batch (or, after an import in
the batch, at the import), ``fields`` always.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stageline.actors.events import RunCompleted, RunFailed
from stageline.events import RecordedEvent
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.ontology.events import (
    EntityTypeAdded,
    EntityTypeConfirmed,
    EntityTypeDemoted,
    EntityTypeProposed,
    EntityTypeRejected,
    OntologyImported,
    PatternAdded,
    PatternDemoted,
    PatternMatched,
    PatternMatchRetracted,
    PatternPromoted,
)
from stageline.ontology.model import Document
from stageline.projections.batch import Handler, fold_into
from stageline.projections.changes import Changes

__all__ = [
    "BUCKET_RUNS",
    "COUNTERS",
    "TYPE_FIELDS",
    "OntologyChanges",
    "TypeChange",
    "fold",
    "status",
]

BUCKET_RUNS = 10
"""Runs per stored bucket of the discovery curve; readers add them up into bigger ones."""

TYPE_FIELDS = ("status", "proposed_at")
"""Every property a change may set on an ``OntologyType`` row (besides its key, ``name``)."""

COUNTERS = (
    "runs",
    "mentions",
    "mentions_established",
    "patterns_promoted",
    "types_proposed",
    "types_confirmed",
    "types_rejected",
)
"""The additive counters (``patterns_discovered`` is the count of discovered pattern ids)."""


@dataclass(slots=True)
class TypeChange:
    """What one batch does to one entity type's row."""

    name: str
    created: dict[str, Any] | None = None
    pre: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    def set(self, **values: Any) -> None:
        (self.pre if self.created is None else self.fields).update(values)


@dataclass(slots=True)
class OntologyChanges(Changes):
    """The ``ontology`` projection's changes."""

    types: dict[str, TypeChange] = field(default_factory=dict)
    kept_types: list[str] | None = None
    """The types of the batch's last import: every other stored type row is deleted first."""
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    discovered: dict[str, int] = field(default_factory=dict)
    """Pattern id added as discovered -> the runs ended before it in the batch (first time)."""
    proposed: dict[int, int] = field(default_factory=dict)
    """Runs ended before them in the batch -> how many types were proposed there."""

    @property
    def has_rows(self) -> bool:
        return bool(
            self.types
            or self.kept_types is not None
            or self.discovered
            or self.proposed
            or any(self.counters.values())
        )

    def type(self, name: Any) -> TypeChange:
        if not isinstance(name, str):
            raise TypeError("a type's name must be a string")
        change = self.types.get(name)
        if change is None:
            change = self.types[name] = TypeChange(name)
        return change


OntologyHandler = Handler[OntologyChanges]


def _on_ontology(handle: Any) -> OntologyHandler:
    def handler(
        b: OntologyChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]
    ) -> None:
        if stream == ONTOLOGY_STREAM:
            handle(b, at, d)

    return handler


def _type_added(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
    status = d["status"]
    if not isinstance(status, str):
        raise TypeError("status must be a string")
    change = b.type(d["name"])
    if change.created is None:
        change.created = {}
    change.set(status=status)


def _type_proposed(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
    change = b.type(d["name"])
    if change.created is None:  # provisional, if new
        change.created = {"status": "provisional", "proposed_at": at}
    b.counters["types_proposed"] += 1
    runs = b.counters["runs"]
    b.proposed[runs] = b.proposed.get(runs, 0) + 1


def _type_status(status: str, counter: str | None, by: int) -> Any:
    def handle(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
        b.type(d["name"]).set(status=status)
        if counter is not None:
            b.counters[counter] += by

    return handle


def _demoted(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
    _type_status("provisional", "types_confirmed", -1)(b, at, d)


def _imported(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
    document = msgspec.convert(d["document"], Document)
    kept = {t.name: t.status for t in document.types}
    for name in [n for n in b.types if n not in kept]:
        del b.types[name]  # deleted by the import, whatever the batch did to it before
    for name, status in kept.items():
        _type_added(b, at, {"name": name, "status": status})
    b.kept_types = list(kept)


def _pattern_added(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
    pid = d["pattern_id"]
    if not isinstance(pid, str):
        raise TypeError("pattern_id must be a string")
    if d["source"] == "discovered" and pid not in b.discovered:
        b.discovered[pid] = b.counters["runs"]


def _counted(counter: str, by: int) -> Any:
    def handle(b: OntologyChanges, at: int, d: dict[str, Any]) -> None:
        b.counters[counter] += by

    return handle


def _mentions(sign: int) -> OntologyHandler:
    def handle(b: OntologyChanges, run: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
        mentions = d["mentions"]
        if not isinstance(mentions, int):
            raise TypeError("mentions must be an integer")
        b.counters["mentions"] += sign * mentions
        if d["established"]:
            b.counters["mentions_established"] += sign * mentions

    return handle


def _run_ended(b: OntologyChanges, run: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    b.counters["runs"] += 1


HANDLERS: dict[str, tuple[OntologyHandler, bool]] = {
    EntityTypeAdded.topic: (_on_ontology(_type_added), False),
    EntityTypeProposed.topic: (_on_ontology(_type_proposed), False),
    EntityTypeConfirmed.topic: (
        _on_ontology(_type_status("confirmed", "types_confirmed", 1)),
        False,
    ),
    EntityTypeDemoted.topic: (_on_ontology(_demoted), False),
    EntityTypeRejected.topic: (_on_ontology(_type_status("rejected", "types_rejected", 1)), False),
    OntologyImported.topic: (_on_ontology(_imported), False),
    PatternAdded.topic: (_on_ontology(_pattern_added), False),
    PatternPromoted.topic: (_on_ontology(_counted("patterns_promoted", 1)), False),
    PatternDemoted.topic: (_on_ontology(_counted("patterns_promoted", -1)), False),
    PatternMatched.topic: (_mentions(1), True),
    PatternMatchRetracted.topic: (_mentions(-1), True),
    RunCompleted.topic: (_run_ended, True),
    RunFailed.topic: (_run_ended, True),
}
"""Event type -> (handler, run streams only?). Ontology events count on the ontology stream only."""


def fold(events: Iterable[RecordedEvent]) -> OntologyChanges:
    """Fold a batch of log events (oldest first) into the ``ontology`` changes."""
    return fold_into(OntologyChanges(), events, HANDLERS)


# -- the status the readers give -----------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def status(
    pattern_stats: dict[str, int],
    type_counts: dict[str, int],
    counters: dict[str, Any],
    buckets: Iterable[tuple[int, int, int]],
    *,
    bucket_runs: int = 100,
) -> dict[str, Any]:
    """The convergence status from what the views store: patterns by source, types by
    status, the counters and the fine buckets ``(bucket, patterns, types)``, the
    discovery curve in buckets of ``bucket_runs`` (a multiple of ``BUCKET_RUNS``)."""
    if bucket_runs < BUCKET_RUNS or bucket_runs % BUCKET_RUNS:
        raise ValueError(f"bucket_runs must be a positive multiple of {BUCKET_RUNS}")
    runs = int(counters.get("runs") or 0)
    fine = [(int(b), int(p or 0), int(t or 0)) for b, p, t in buckets]
    last = max([runs // bucket_runs, *(b * BUCKET_RUNS // bucket_runs for b, _, _ in fine)])
    curve: list[dict[str, Any]] = [
        {"runs_from": i * bucket_runs, "runs_to": (i + 1) * bucket_runs, "patterns": 0, "types": 0}
        for i in range(last + 1)
    ]
    for b, p, t in fine:
        entry = curve[b * BUCKET_RUNS // bucket_runs]
        entry["patterns"] += p
        entry["types"] += t
    for entry in curve:
        entry["per_100_runs"] = (entry["patterns"] + entry["types"]) * 100 / bucket_runs
    mentions = int(counters.get("mentions") or 0)
    established = int(counters.get("mentions_established") or 0)
    candidates = pattern_stats.get("discovered", 0) + pattern_stats.get("promoted", 0)
    non_seed = sum(n for s, n in type_counts.items() if s != "seed")
    return {
        "pattern_stats": pattern_stats,
        "type_counts": type_counts,
        "totals": {
            "patterns": sum(pattern_stats.values()),
            "types": sum(type_counts.values()),
            "runs": runs,
            "mentions": mentions,
            "mentions_established": established,
            "patterns_discovered": sum(p for _, p, _ in fine),
            "types_proposed": int(counters.get("types_proposed") or 0),
        },
        "rates": {
            "promotion_rate": _share(pattern_stats.get("promoted", 0), candidates),
            "confirmation_rate": _share(type_counts.get("confirmed", 0), non_seed),
            "rejection_rate": _share(type_counts.get("rejected", 0), non_seed),
            "resolved_by_confirmed": _share(established, mentions),
        },
        "discovery_curve": curve,
    }
