"""The pattern-stats fold (``patterns``), without any I/O: rows, and batches that compose."""

from __future__ import annotations

from ontology_history import (
    AT,
    HISTORY,
    IMPORTED,
    ONT,
    A,
    B,
    D,
    E,
    G,
    H,
    R,
    Z,
    added,
    logged,
    matched,
    patterns_view,
    splits,
)

from stageline.ontology.events import OntologyImported, PatternRemoved
from stageline.ontology.model import Ontology
from stageline.projections.patterns import IMPORT_REASON, fold


def test_the_history_leaves_every_pattern_as_the_log_says() -> None:
    view = patterns_view([HISTORY])
    assert set(view) == {A, B, D, E, G, H, Z, R}
    assert view[A] | {"created_at": 0} == {
        "id": A,
        "name": "Alice",
        "entity_type": "person",
        "source": "seed",
        "confidence": 0.95,  # the import's
        "is_global": False,
        "active": True,
        "matches": 2,  # 2 + 1, the 1 retracted
        "runs_matched": 1,
        "first_seen": AT[5],
        "last_seen": AT[14],  # a retraction does not move it back
        "created_at": 0,
    }
    assert view[A]["created_at"] == AT[3]
    assert (view[B]["active"], view[B]["removed_reason"]) == (False, "sightings withdrawn")
    # discovered, promoted, demoted, dropped by the import
    assert (view[D]["source"], view[D]["active"], view[D]["removed_reason"]) == (
        "discovered",
        False,
        IMPORT_REASON,
    )
    assert (view[E]["active"], view[D]["matches"]) == (False, 1)
    # global patterns matched here: taken from the event, never made inactive by an import
    assert (view[H]["is_global"], view[H]["active"], view[H]["source"], view[H]["matches"]) == (
        True,
        True,
        "manual",
        3,
    )
    assert "confidence" not in view[H]
    assert (view[G]["is_global"], view[G]["active"], view[G]["removed_reason"]) == (
        True,
        False,
        "hidden",
    )
    # dropped by the import, matched by a stale view, then added again
    assert (view[Z]["active"], view[Z]["confidence"], view[Z]["matches"]) == (True, 0.7, 4)
    assert "removed_reason" not in view[Z]
    imported_at = next(AT[e.position] for e in HISTORY if e.type == "OntologyImported")
    assert (view[R]["source"], view[R]["active"], view[R]["created_at"]) == (
        "manual",
        True,
        imported_at,
    )


def test_own_patterns_agree_with_the_ontology_fold() -> None:
    ontology = Ontology.of(e for e in HISTORY if e.stream == ONT)
    view = patterns_view([HISTORY])
    own = {pid: row for pid, row in view.items() if not row["is_global"]}
    assert set(own) == set(ontology.patterns)
    for pid, p in ontology.patterns.items():
        row = own[pid]
        assert (row["active"], row["source"], row["confidence"], row["name"]) == (
            p.active,
            p.source,
            p.confidence,
            p.name,
        )
        assert row.get("removed_reason") == p.removed


def test_batches_compose_wherever_they_are_cut() -> None:
    whole = patterns_view([HISTORY])
    for groups in splits(HISTORY):
        assert patterns_view(groups) == whole, [len(g) for g in groups]


def test_ontology_events_count_on_the_ontology_stream_only_and_matches_on_runs_only() -> None:
    events = logged(
        [
            ("run-r1", added("Alice", "person", "seed")),
            ("elsewhere", PatternRemoved(pattern_id=A, reason="x")),
            (ONT, matched("Alice", "person", 2)),
        ]
    )
    changes = fold(events)
    assert changes.patterns == {}
    assert (changes.position, changes.events, changes.has_rows) == (3, 3, False)


def test_a_bad_payload_is_skipped_and_noted() -> None:
    events = logged([(ONT, added("Alice", "person", "seed"))])
    events[0].data["confidence"] = "high"
    events += logged([("run-r1", matched("Bob", "person", 1))], first=2)
    events[1].data["mentions"] = "many"
    changes = fold(events)
    assert changes.rejected == [1, 2]


def test_an_import_alone_still_writes_to_deactivate_the_others() -> None:
    empty = {**IMPORTED, "types": [], "patterns": []}
    changes = fold(logged([(ONT, OntologyImported(document=empty))]))
    assert changes.imported and changes.has_rows
    assert changes.patterns == {}


def test_removing_before_a_match_creates_the_row_in_the_same_batch() -> None:
    # the removal finds no row (it applies only to one that existed), the match makes one
    events = logged([(ONT, PatternRemoved(pattern_id=H, reason="hidden"))]) + logged(
        [("run-r1", matched("Hooli", "org", 1, source="manual", is_global=True))], first=2
    )
    whole = patterns_view([events])
    assert whole == patterns_view([[e] for e in events])
    assert whole[H]["active"] is True
    assert "removed_reason" not in whole[H]
