"""``extract`` and ``discover`` with a workspace's patterns, and their compensation (pure)."""

from __future__ import annotations

import msgspec
from ontology_helpers import Log, seeded

from stageline.actors.builtin.memory import (
    EntityMentioned,
    EntityMentionRetracted,
    discover,
    extract,
    retract_mentions,
    retract_proposals,
)
from stageline.actors.stage import StageContext
from stageline.ontology.events import (
    PatternAdded,
    PatternMatched,
    PatternMatchRetracted,
    PatternProposalRetracted,
    PatternProposed,
)
from stageline.ontology.model import View, pattern_id


def ctx(view: View | None = None) -> StageContext:
    return StageContext("w", "r1", "extract", 1, {}, None, view)


def test_extract_counts_matches_per_pattern_and_marks_candidates() -> None:
    log = Log()
    state = seeded(log)
    state.apply_recorded(
        log.ontology(
            PatternAdded(
                pattern_id=pattern_id("Vespucci Labs", "organization"),
                name="Vespucci Labs",
                entity_type="organization",
                confidence=0.6,
                source="discovered",
            )
        )
    )
    result = extract({"text": "Bob met bob and Vespucci Labs."}, ctx(View.of(state)))
    mentions = [e for e in result.events if isinstance(e, EntityMentioned)]
    assert [m.surface for m in mentions] == ["Bob", "bob", "Vespucci Labs"]
    assert mentions[0].pattern_id == pattern_id("Bob", "person")
    matched = {e.name: e for e in result.events if isinstance(e, PatternMatched)}
    assert matched["Bob"].mentions == 2 and matched["Bob"].established
    assert matched["Vespucci Labs"].mentions == 1 and not matched["Vespucci Labs"].established


def test_extract_without_a_loaded_view_uses_the_seed() -> None:
    result = extract({"text": "Vespucci Labs and Alice"}, ctx())
    assert [e.entity for e in result.events if isinstance(e, EntityMentioned)] == ["Alice"]


def test_discover_proposes_only_what_the_view_does_not_know() -> None:
    log = Log()
    state = seeded(log)
    text = "Vespucci Labs hired Alice; Halvorsen Analytics did not."
    first = discover({"text": text}, ctx(View.of(state)))
    assert [e.name for e in first.events if isinstance(e, PatternProposed)] == [
        "Vespucci Labs",
        "Halvorsen Analytics",
    ]
    state.apply_recorded(
        log.ontology(
            PatternAdded(
                pattern_id=pattern_id("Vespucci Labs", "organization"),
                name="Vespucci Labs",
                entity_type="organization",
                confidence=0.6,
                source="discovered",
            )
        )
    )
    second = discover({"text": text}, ctx(View.of(state)))
    assert [e.name for e in second.events if isinstance(e, PatternProposed)] == [
        "Halvorsen Analytics"
    ]


def test_discover_skips_types_the_workspace_rejected() -> None:
    log = Log()
    state = seeded(log)
    state.apply("EntityTypeAdded", {"name": "event", "status": "rejected"})
    result = discover({"text": "They run PyCon US."}, ctx(View.of(state)))
    assert result.events == []


def test_compensators_retract_each_recorded_effect() -> None:
    log = Log()
    result = extract({"text": "Alice and Bob"}, ctx())
    recorded = [log.run("r1", e) for e in result.events]
    retracted = retract_mentions(recorded)
    assert sorted(type(e).__name__ for e in retracted) == sorted(
        ["EntityMentionRetracted"] * 2 + ["PatternMatchRetracted"] * 2
    )
    for e, original in zip(retracted, recorded, strict=True):
        assert e.compensates == str(original.event_id)  # type: ignore[attr-defined]
    assert isinstance(retracted[0], EntityMentionRetracted)
    assert isinstance(retracted[-1], PatternMatchRetracted)
    proposals = discover({"text": "Hello from Zephyr Labs."}, ctx())
    recorded = [log.run("r1", e) for e in proposals.events]
    assert [msgspec.to_builtins(e) for e in retract_proposals(recorded)] == [
        msgspec.to_builtins(
            PatternProposalRetracted(
                compensates=str(recorded[0].event_id),
                pattern_id=pattern_id("Zephyr Labs", "organization"),
            )
        )
    ]
