"""The ontology's rules as a pure reaction to log events: discovery, promotion,
confirmation, and compensation undoing exactly what fell below a rule."""

from __future__ import annotations

import msgspec
from ontology_helpers import Log, matched, proposed, seeded

from stageline.events.envelope import DomainEvent, RecordedEvent
from stageline.ontology.events import (
    EntityTypeConfirmed,
    EntityTypeDemoted,
    EntityTypeRejected,
    PatternAdded,
    PatternDemoted,
    PatternMatchRetracted,
    PatternPromoted,
    PatternProposalRetracted,
    PatternRemoved,
    PatternSighted,
)
from stageline.ontology.model import Ontology, Rules, pattern_id
from stageline.ontology.policy import react

RULES = Rules(promote_after_runs=2, confirm_after_mentions=3)
VESPUCCI = pattern_id("Vespucci Labs", "organization")
PYCON = pattern_id("PyCon US", "event")


def topics(events: list[DomainEvent]) -> list[str]:
    return [e.topic for e in events]


def handle(state: Ontology, log: Log, event: RecordedEvent) -> list[DomainEvent]:
    """React, then record the decisions on the ontology stream as the reactor does."""
    out = react(state, event, RULES)
    for decided in out:
        state.version = log.ontology(decided).version
    return out


def test_a_proposal_adds_a_discovered_pattern_and_counts_as_a_sighting() -> None:
    log = Log()
    state = seeded(log)
    out = handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    assert topics(out) == ["PatternAdded", "PatternSighted"]
    added = out[0]
    assert isinstance(added, PatternAdded)
    assert (added.source, added.run_id, added.pattern_id) == ("discovered", "r1", VESPUCCI)
    p = state.patterns[VESPUCCI]
    assert (p.source, p.active, p.runs()) == ("discovered", True, 1)


def test_a_new_type_is_proposed_provisional_once() -> None:
    log = Log()
    state = seeded(log)
    out = handle(state, log, log.run("r1", proposed("PyCon US", "event")))
    assert topics(out) == ["EntityTypeProposed", "PatternAdded", "PatternSighted"]
    assert state.types["event"].status == "provisional"
    again = handle(state, log, log.run("r2", proposed("DjangoCon", "event")))
    assert "EntityTypeProposed" not in topics(again)


def test_seen_in_n_distinct_runs_is_promoted_but_not_twice_in_one_run() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    same_run = handle(state, log, log.run("r1", matched("Vespucci Labs", "organization")))
    assert topics(same_run) == ["PatternSighted"]  # a second sighting, but one run
    out = handle(state, log, log.run("r2", matched("Vespucci Labs", "organization")))
    assert topics(out) == ["PatternSighted", "PatternPromoted"]
    promoted = out[1]
    assert isinstance(promoted, PatternPromoted)
    assert (promoted.runs, promoted.confidence) == (2, RULES.promoted_confidence)
    assert state.patterns[VESPUCCI].source == "promoted"
    assert topics(handle(state, log, log.run("r3", matched("Vespucci Labs", "organization")))) == [
        "PatternSighted"
    ]


def test_a_provisional_type_is_confirmed_at_m_live_mentions() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("PyCon US", "event")))  # 1 mention
    out = handle(state, log, log.run("r2", matched("PyCon US", "event", mentions=2)))  # 3
    assert "EntityTypeConfirmed" in topics(out)
    confirmed = next(e for e in out if isinstance(e, EntityTypeConfirmed))
    assert confirmed.mentions == 3
    assert state.types["event"].status == "confirmed"


def test_matches_of_seed_patterns_of_seed_types_decide_nothing() -> None:
    log = Log()
    state = seeded(log)
    assert handle(state, log, log.run("r1", matched("Alice", "person", source="seed"))) == []


def test_replaying_events_the_state_already_holds_appends_nothing() -> None:
    log = Log()
    state = seeded(log)
    events = [
        log.run("r1", proposed("Vespucci Labs", "organization")),
        log.run("r2", matched("Vespucci Labs", "organization")),
        log.run("r2", proposed("PyCon US", "event")),
    ]
    first = [e for ev in events for e in handle(state, log, ev)]
    assert first
    assert [e for ev in events for e in react(state, ev, RULES)] == []


def test_undo_demotes_what_a_run_alone_promoted_and_keeps_the_rest() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    m2 = log.run("r2", matched("Vespucci Labs", "organization"))
    handle(state, log, m2)
    assert state.patterns[VESPUCCI].source == "promoted"
    retract = PatternMatchRetracted(
        compensates=str(m2.event_id), pattern_id=VESPUCCI, mentions=1, established=False
    )
    out = handle(state, log, log.run("r2", retract))
    assert topics(out) == ["PatternSightingWithdrawn", "PatternDemoted"]
    demoted = out[1]
    assert isinstance(demoted, PatternDemoted)
    assert demoted.confidence == 0.5  # back to what it was discovered with
    p = state.patterns[VESPUCCI]
    assert (p.source, p.active, p.runs()) == ("discovered", True, 1)
    # retracting the same thing again changes nothing
    assert handle(state, log, log.run("r2", retract)) == []


def test_undo_of_a_run_when_others_also_saw_it_keeps_the_promotion() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    m2 = log.run("r2", matched("Vespucci Labs", "organization"))
    handle(state, log, m2)
    handle(state, log, log.run("r3", matched("Vespucci Labs", "organization")))
    retract = PatternMatchRetracted(
        compensates=str(m2.event_id), pattern_id=VESPUCCI, mentions=1, established=False
    )
    assert topics(handle(state, log, log.run("r2", retract))) == ["PatternSightingWithdrawn"]
    assert state.patterns[VESPUCCI].source == "promoted"


def test_withdrawing_the_only_proposal_removes_the_pattern_and_rejects_its_new_type() -> None:
    log = Log()
    state = seeded(log)
    p1 = log.run("r1", proposed("PyCon US", "event"))
    handle(state, log, p1)
    out = handle(
        state,
        log,
        log.run("r1", PatternProposalRetracted(compensates=str(p1.event_id), pattern_id=PYCON)),
    )
    assert topics(out) == ["PatternSightingWithdrawn", "PatternRemoved", "EntityTypeRejected"]
    assert not state.patterns[PYCON].active
    assert state.types["event"].status == "rejected"
    # discovery proposes nothing more for a rejected type
    assert handle(state, log, log.run("r9", proposed("PyCon EU", "event"))) == []


def test_a_confirmation_is_demoted_when_retractions_take_it_below_m() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("PyCon US", "event")))
    m = log.run("r2", matched("PyCon US", "event", mentions=2))
    handle(state, log, m)
    handle(state, log, log.run("r3", matched("PyCon US", "event", mentions=1)))
    assert state.types["event"].status == "confirmed"
    out = handle(
        state,
        log,
        log.run(
            "r2",
            PatternMatchRetracted(
                compensates=str(m.event_id), pattern_id=PYCON, mentions=2, established=True
            ),
        ),
    )
    assert "EntityTypeDemoted" in topics(out)
    demoted = next(e for e in out if isinstance(e, EntityTypeDemoted))
    assert demoted.mentions == 2
    assert state.types["event"].status == "provisional"
    # the pattern itself stays promoted: r1 and r3 still saw it
    assert state.patterns[PYCON].source == "promoted"


def test_a_pattern_removed_by_hand_is_not_rediscovered() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    removal = log.ontology(PatternRemoved(pattern_id=VESPUCCI, reason="removed by hand"))
    assert handle(state, log, removal) == []  # organization is a seed type: nothing to reject
    assert not state.patterns[VESPUCCI].active
    assert handle(state, log, log.run("r2", proposed("Vespucci Labs", "organization"))) == []


def test_removing_the_last_pattern_of_a_provisional_type_by_hand_rejects_it() -> None:
    log = Log()
    state = seeded(log)
    handle(state, log, log.run("r1", proposed("PyCon US", "event")))
    out = handle(state, log, log.ontology(PatternRemoved(pattern_id=PYCON, reason="by hand")))
    assert [type(e) for e in out] == [EntityTypeRejected]


def test_events_on_other_streams_are_ignored() -> None:
    log = Log()
    state = seeded(log)
    assert (
        react(state, log.record("custom", proposed("Vespucci Labs", "organization")), RULES) == []
    )


def test_own_decisions_seen_again_in_the_log_are_not_folded_twice() -> None:
    log = Log()
    state = seeded(log)
    out = handle(state, log, log.run("r1", proposed("Vespucci Labs", "organization")))
    assert [type(e) for e in out] == [PatternAdded, PatternSighted]
    before = state.patterns[VESPUCCI].sightings.copy()
    # the same decisions as they come round in the log: versions the state holds
    for v, decided in enumerate(out, start=state.version - len(out) + 1):
        e = msgspec.structs.replace(log.ontology(decided), version=v)
        assert react(state, e, RULES) == []
    assert state.patterns[VESPUCCI].sightings == before
