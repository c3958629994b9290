"""A workspace's ontology history as log events, and the reference semantics of the
``patterns`` and ``ontology`` writers over plain dicts (what FalkorDB must agree with)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from itertools import pairwise
from typing import Any

from projection_helpers import T0, logged

from stageline.actors.events import RunCompleted, RunFailed
from stageline.events import DomainEvent, RecordedEvent
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.ontology.events import (
    EntityTypeAdded,
    EntityTypeConfirmed,
    EntityTypeProposed,
    EntityTypeRejected,
    OntologyImported,
    PatternAdded,
    PatternDemoted,
    PatternMatched,
    PatternMatchRetracted,
    PatternPromoted,
    PatternRemoved,
)
from stageline.ontology.model import pattern_id
from stageline.projections.ontology import BUCKET_RUNS, COUNTERS, OntologyChanges
from stageline.projections.patterns import IMPORT_REASON, PatternChanges

ONT = ONTOLOGY_STREAM

A = pattern_id("Alice", "person")
B = pattern_id("Bob", "person")
D = pattern_id("Qux", "technology")
E = pattern_id("Quux", "technology")
G = pattern_id("Globex", "org")  # global, hidden in the workspace
H = pattern_id("Hooli", "org")  # global, matched here
Z = pattern_id("Zanzibar DB", "technology")
R = pattern_id("R2-D2", "robot")


def ms(position: int) -> int:
    """The event time (ms) of the event at ``position`` in a ``logged`` history."""
    return int((T0 + timedelta(seconds=position)).timestamp() * 1000)


def added(pid_name: str, entity_type: str, source: str, confidence: float = 1.0) -> PatternAdded:
    return PatternAdded(
        pattern_id=pattern_id(pid_name, entity_type),
        name=pid_name,
        entity_type=entity_type,
        confidence=confidence,
        source=source,  # type: ignore[arg-type]
    )


def matched(
    name: str, entity_type: str, mentions: int, *, source: str = "seed", is_global: bool = False
) -> PatternMatched:
    return PatternMatched(
        pattern_id=pattern_id(name, entity_type),
        name=name,
        entity_type=entity_type,
        source=source,  # type: ignore[arg-type]
        is_global=is_global,
        mentions=mentions,
        established=source != "discovered",
    )


def completed_runs(first: int, n: int) -> list[tuple[str, DomainEvent]]:
    return [(f"run-r{i}", RunCompleted()) for i in range(first, first + n)]


IMPORTED = {
    "format": "stageline.ontology",
    "version": 1,
    "types": [
        {"name": "person", "status": "seed"},
        {"name": "technology", "status": "confirmed"},
        {"name": "robot", "status": "provisional"},
    ],
    "patterns": [
        {"name": "Alice", "entity_type": "person", "confidence": 0.95, "source": "seed"},
        {"name": "R2-D2", "entity_type": "robot", "confidence": 0.9, "source": "manual"},
    ],
}

HISTORY_PAIRS: list[tuple[str, DomainEvent]] = [
    (ONT, EntityTypeAdded(name="person", status="seed")),
    (ONT, EntityTypeAdded(name="technology", status="seed")),
    (ONT, added("Alice", "person", "seed")),
    (ONT, added("Bob", "person", "seed")),
    ("run-r1", matched("Alice", "person", 2)),
    ("run-r1", matched("Globex", "org", 1, source="manual", is_global=True)),
    ("run-r1", matched("Hooli", "org", 3, source="manual", is_global=True)),
    ("run-r1", RunCompleted()),  # runs: 1
    (ONT, added("Qux", "technology", "discovered", 0.5)),  # bucket 0
    (ONT, EntityTypeProposed(name="org", pattern_id=G, run_id="r1")),  # bucket 0
    ("run-r2", matched("Qux", "technology", 1, source="discovered")),
    ("run-r2", RunCompleted()),  # runs: 2
    (ONT, PatternPromoted(pattern_id=D, runs=2, confidence=0.8)),
    ("run-r3", matched("Alice", "person", 1)),
    ("run-r3", PatternMatchRetracted(compensates="x", pattern_id=A, mentions=1, established=True)),
    ("run-r3", RunFailed(stage="parse", error_type="E", error="e")),  # runs: 3
    (ONT, EntityTypeConfirmed(name="org", mentions=3)),
    (ONT, PatternRemoved(pattern_id=B, reason="sightings withdrawn")),
    (ONT, added("Zanzibar DB", "technology", "manual")),
    *completed_runs(4, 9),  # runs: 12
    (ONT, added("Quux", "technology", "discovered", 0.4)),  # bucket 1
    (ONT, EntityTypeProposed(name="gadget", pattern_id=E, run_id="r12")),  # bucket 1
    (ONT, PatternDemoted(pattern_id=D, runs=1, confidence=0.5)),
    (ONT, added("Qux", "technology", "discovered", 0.5)),  # again: not counted again
    (ONT, PatternRemoved(pattern_id=G, reason="hidden")),  # a global one hidden here
    (ONT, OntologyImported(document=IMPORTED)),
    ("run-r13", matched("Zanzibar DB", "technology", 4, source="manual")),  # a stale view
    (ONT, EntityTypeRejected(name="robot", reason="no patterns")),
    (ONT, added("Zanzibar DB", "technology", "manual", 0.7)),
    ("run-r13", RunCompleted()),  # runs: 13
    *completed_runs(14, 8),  # runs: 21
    (ONT, EntityTypeProposed(name="org", pattern_id=H, run_id="r21")),  # bucket 2
    (ONT, EntityTypeConfirmed(name="gadget", mentions=3)),  # deleted by the import: nothing
]
HISTORY = logged(HISTORY_PAIRS)
AT = {i: ms(i) for i in range(1, len(HISTORY) + 1)}


def batches(events: Sequence[RecordedEvent], cuts: Iterable[int]) -> list[list[RecordedEvent]]:
    """``events`` cut before each index of ``cuts``."""
    bounds = [0, *sorted(set(cuts)), len(events)]
    return [list(events[a:b]) for a, b in pairwise(bounds) if b > a]


def splits(events: Sequence[RecordedEvent]) -> Iterable[list[list[RecordedEvent]]]:
    """Every way to cut ``events`` in two, one event per batch, and a few more."""
    yield [list(events)]
    yield [[e] for e in events]
    for cut in range(1, len(events)):
        yield batches(events, [cut])
    for size in (2, 3, 5, 7):
        yield batches(events, range(size, len(events), size))


# -- the reference writers ---------------------------------------------------------------


def _deactivate(row: dict[str, Any]) -> None:
    if row.get("active") and not row.get("is_global"):
        row["removed_reason"], row["active"] = IMPORT_REASON, False


def apply_patterns(view: dict[str, dict[str, Any]], changes: PatternChanges) -> None:
    """What the ``patterns`` writer does with a batch's changes, over dicts."""
    if changes.imported:
        for pid, row in view.items():
            if pid not in changes.patterns:
                _deactivate(row)
    for pid, change in changes.patterns.items():
        row = view.get(pid)
        existed = row is not None
        if row is None:
            if change.created is None:
                continue
            row = view[pid] = {"id": pid, "matches": 0, "runs_matched": 0, **change.created}
        else:
            row.update(change.pre)
        if change.deactivate == "always" or (change.deactivate == "pre" and existed):
            _deactivate(row)
        row.update(change.fields)
        row["matches"] += change.matches
        row["runs_matched"] += change.runs_matched
        for key, pick in (("first_seen", min), ("last_seen", max)):
            new = getattr(change, key)
            if new is not None:
                old = row.get(key)
                row[key] = new if old is None else pick(old, new)


def patterns_view(groups: Iterable[Sequence[RecordedEvent]]) -> dict[str, dict[str, Any]]:
    from stageline.projections.patterns import fold

    view: dict[str, dict[str, Any]] = {}
    for group in groups:
        apply_patterns(view, fold(group))
    return {pid: {k: v for k, v in row.items() if v is not None} for pid, row in view.items()}


def empty_ontology() -> dict[str, Any]:
    return {
        "types": {},
        "counters": dict.fromkeys(COUNTERS, 0),
        "discovered": {},
        "buckets": {},
    }


def apply_ontology(view: dict[str, Any], changes: OntologyChanges) -> None:
    """What the ``ontology`` writer does with a batch's changes, over dicts."""
    types = view["types"]
    if changes.kept_types is not None:
        for name in [n for n in types if n not in changes.kept_types]:
            del types[name]
    for name, change in changes.types.items():
        row = types.get(name)
        if row is None:
            if change.created is None:
                continue
            row = types[name] = {"name": name, **change.created}
        else:
            row.update(change.pre)
        row.update(change.fields)
    runs = view["counters"]["runs"]
    buckets = view["buckets"]
    for pid, offset in changes.discovered.items():
        if pid not in view["discovered"]:
            bucket = view["discovered"][pid] = (runs + offset) // BUCKET_RUNS
            buckets.setdefault(bucket, [0, 0])[0] += 1
    for offset, n in changes.proposed.items():
        buckets.setdefault((runs + offset) // BUCKET_RUNS, [0, 0])[1] += n
    for name in COUNTERS:
        view["counters"][name] += changes.counters[name]


def ontology_view(groups: Iterable[Sequence[RecordedEvent]]) -> dict[str, Any]:
    from stageline.projections.ontology import fold

    view = empty_ontology()
    for group in groups:
        apply_ontology(view, fold(group))
    view["types"] = {
        n: {k: v for k, v in row.items() if v is not None} for n, row in view["types"].items()
    }
    return view
