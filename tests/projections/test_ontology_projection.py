"""The convergence fold (``ontology``), without any I/O: types, counters, discovery curve."""

from __future__ import annotations

import pytest
from ontology_history import AT, HISTORY, ONT, added, logged, ontology_view, splits

from stageline.actors.events import RunCompleted
from stageline.events import DomainEvent
from stageline.ontology.events import EntityTypeProposed
from stageline.ontology.model import Ontology
from stageline.projections.ontology import fold, status


def test_the_history_leaves_types_counters_and_curve() -> None:
    view = ontology_view([HISTORY])
    assert view["types"] == {
        "person": {"name": "person", "status": "seed"},
        "technology": {"name": "technology", "status": "confirmed"},
        "robot": {"name": "robot", "status": "rejected"},
        # deleted by the import, proposed again after it
        "org": {"name": "org", "status": "provisional", "proposed_at": AT[len(HISTORY) - 1]},
    }
    assert view["counters"] == {
        "runs": 21,
        "mentions": 2 + 1 + 3 + 1 + 1 - 1 + 4,
        "mentions_established": 2 + 1 + 3 + 1 - 1 + 4,
        "patterns_promoted": 0,  # promoted, then demoted
        "types_proposed": 3,
        "types_confirmed": 2,  # events: org's, and gadget's (which came once it was deleted)
        "types_rejected": 1,
    }
    # Qux at 1 run, Quux at 12 (Qux again is not counted); org at 1, gadget at 12, org at 21
    assert view["buckets"] == {0: [1, 1], 1: [1, 1], 2: [0, 1]}
    assert len(view["discovered"]) == 2


def test_types_agree_with_the_ontology_fold() -> None:
    ontology = Ontology.of(e for e in HISTORY if e.stream == ONT)
    view = ontology_view([HISTORY])
    assert {n: t["status"] for n, t in view["types"].items()} == {
        n: t.status for n, t in ontology.types.items()
    }


def test_batches_compose_wherever_they_are_cut() -> None:
    whole = ontology_view([HISTORY])
    for groups in splits(HISTORY):
        assert ontology_view(groups) == whole, [len(g) for g in groups]


def run_pairs(first: int, n: int) -> list[tuple[str, DomainEvent]]:
    return [(f"run-r{i}", RunCompleted()) for i in range(first, first + n)]


def test_discoveries_fall_in_the_bucket_of_the_runs_before_them() -> None:
    events = logged(
        [
            (ONT, added("P0", "technology", "discovered")),  # 0 runs
            *run_pairs(0, 9),
            (ONT, EntityTypeProposed(name="t9", pattern_id="p")),  # 9 runs: bucket 0
            *run_pairs(9, 1),
            (ONT, added("P10", "technology", "discovered")),  # 10 runs: bucket 1
            (ONT, added("S", "technology", "seed")),  # not a discovery
            *run_pairs(10, 25),
            (ONT, added("P35", "technology", "discovered")),  # 35 runs: bucket 3
        ]
    )
    whole = ontology_view([events])
    assert whole["buckets"] == {0: [1, 1], 1: [1, 0], 3: [1, 0]}
    for groups in splits(events):
        assert ontology_view(groups) == whole
    changes = fold(events[10:])
    assert changes.proposed == {0: 1} and list(changes.discovered.values()) == [1, 26]


def test_the_status_adds_fine_buckets_into_bigger_ones_and_takes_rates() -> None:
    got = status(
        {"seed": 3, "discovered": 1, "promoted": 3, "manual": 0},
        {"seed": 2, "provisional": 1, "confirmed": 2, "rejected": 1},
        {"runs": 215, "mentions": 10, "mentions_established": 4, "types_proposed": 4},
        [(0, 2, 1), (9, 1, 0), (10, 1, 1), (21, 0, 2)],
        bucket_runs=100,
    )
    assert got["pattern_stats"]["promoted"] == 3
    assert got["totals"] == {
        "patterns": 7,
        "types": 6,
        "runs": 215,
        "mentions": 10,
        "mentions_established": 4,
        "patterns_discovered": 4,
        "types_proposed": 4,
    }
    assert got["rates"] == {
        "promotion_rate": 0.75,
        "confirmation_rate": 0.5,
        "rejection_rate": 0.25,
        "resolved_by_confirmed": 0.4,
    }
    assert got["discovery_curve"] == [
        {"runs_from": 0, "runs_to": 100, "patterns": 3, "types": 1, "per_100_runs": 4.0},
        {"runs_from": 100, "runs_to": 200, "patterns": 1, "types": 1, "per_100_runs": 2.0},
        {"runs_from": 200, "runs_to": 300, "patterns": 0, "types": 2, "per_100_runs": 2.0},
    ]
    small = status({}, {}, {}, [], bucket_runs=10)
    assert small["discovery_curve"] == [
        {"runs_from": 0, "runs_to": 10, "patterns": 0, "types": 0, "per_100_runs": 0.0}
    ]
    assert set(small["rates"].values()) == {None}
    with pytest.raises(ValueError, match="multiple"):
        status({}, {}, {}, [], bucket_runs=15)
