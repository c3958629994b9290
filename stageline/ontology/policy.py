"""The ontology's rules, as a pure reaction to log events.

``react`` takes the folded ontology and one event of the workspace log and
says what to append to the ontology stream, folding its answer in at once so
the next event sees it:

- a run proposed a pattern (``PatternProposed``): the pattern is added as
  ``discovered`` (and its type proposed, ``provisional``, if the ontology
  lacks it), and the proposal counts as a sighting;
- a run matched a discovered or promoted pattern, or one of a type not
  settled by the seed (``PatternMatched``): a sighting;
- a discovered pattern sighted in ``promote_after_runs`` distinct runs is
  promoted; a provisional type whose patterns have ``confirm_after_mentions``
  live mentions is confirmed;
- a retraction (a stage or run compensated) withdraws the sighting behind it,
  and undoes only what then falls below a rule: a promotion, a confirmation, a
  discovered pattern left without sightings (removed), a provisional type left
  without patterns (rejected).

Decisions depend on the state, never on having seen an event before, and a
sighting is keyed by the event behind it: replaying events the state already
holds appends nothing, which is what makes the reactor safe to restart.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stageline.events.envelope import DomainEvent, RecordedEvent, registry
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.ontology.events import (
    EntityTypeConfirmed,
    EntityTypeDemoted,
    EntityTypeProposed,
    EntityTypeRejected,
    PatternAdded,
    PatternDemoted,
    PatternPromoted,
    PatternRemoved,
    PatternSighted,
    PatternSightingWithdrawn,
)
from stageline.ontology.model import REMOVED_BY_HAND, Ontology, PatternState, Rules

__all__ = ["RUN_PREFIX", "react"]

RUN_PREFIX = "run-"

WITHDRAWN = "its only sightings were withdrawn"
NO_PATTERN_LEFT = "no pattern of the type is left"


def react(state: Ontology, e: RecordedEvent, rules: Rules) -> list[DomainEvent]:
    """What to append to the ontology stream for log event ``e``; ``state`` folds it in."""
    if e.stream == ONTOLOGY_STREAM:
        return _after_ontology_event(state, e)
    if not e.stream.startswith(RUN_PREFIX):
        return []
    handler = _RUN_HANDLERS.get(e.type)
    if handler is None:
        return []
    run_id = e.stream[len(RUN_PREFIX) :]
    d = registry.upcast(e.type, e.schema_version, e.data)
    out = _Out(state)
    handler(out, run_id, str(e.event_id), d, rules)
    return out.events


class _Out:
    """Collects decisions and folds each into the state as it is made."""

    def __init__(self, state: Ontology) -> None:
        self.state = state
        self.events: list[DomainEvent] = []

    def add(self, event: DomainEvent) -> None:
        self.events.append(event)
        self.state.apply(event.topic, msgspec.to_builtins(event))


def _proposed(out: _Out, run_id: str, evidence: str, d: dict[str, Any], rules: Rules) -> None:
    state, pid, type_name = out.state, d["pattern_id"], d["entity_type"]
    t = state.types.get(type_name)
    if t is not None and t.status == "rejected":
        return  # a rejected type takes no new patterns from discovery
    p = state.patterns.get(pid)
    if p is not None and not p.active and p.removed == REMOVED_BY_HAND:
        return  # an operator took it out: discovery does not bring it back
    if t is None:
        out.add(EntityTypeProposed(name=type_name, pattern_id=pid, run_id=run_id))
    if p is None or not p.active:
        out.add(
            PatternAdded(
                pattern_id=pid,
                name=d["name"],
                entity_type=type_name,
                confidence=float(d["confidence"]),
                source="discovered",
                run_id=run_id,
            )
        )
    _sight(out, state.patterns[pid], run_id, evidence, 1, rules)


def _matched(out: _Out, run_id: str, evidence: str, d: dict[str, Any], rules: Rules) -> None:
    p = out.state.patterns.get(d["pattern_id"])
    if p is None or not p.active or not _tracked(out.state, p):
        return  # a seed or hand-made pattern of a settled type: nothing to decide
    _sight(out, p, run_id, evidence, int(d["mentions"]), rules)


def _retracted(out: _Out, run_id: str, evidence: str, d: dict[str, Any], rules: Rules) -> None:
    state = out.state
    p = state.patterns.get(d["pattern_id"])
    withdrawn = d["compensates"]
    if p is None or withdrawn not in p.sightings:
        return
    out.add(PatternSightingWithdrawn(pattern_id=p.id, run_id=run_id, evidence=withdrawn))
    if p.active and p.source == "promoted" and p.runs() < rules.promote_after_runs:
        out.add(PatternDemoted(pattern_id=p.id, runs=p.runs(), confidence=p.base_confidence))
    if p.active and p.source == "discovered" and not p.sightings:
        out.add(PatternRemoved(pattern_id=p.id, reason=WITHDRAWN))
    t = state.types.get(p.entity_type)
    if t is None:
        return
    mentions = state.type_mentions(t.name)
    if t.status == "confirmed" and t.by_rule and mentions < rules.confirm_after_mentions:
        out.add(EntityTypeDemoted(name=t.name, mentions=mentions))
    _reject_if_empty(out, t.name)


def _after_ontology_event(state: Ontology, e: RecordedEvent) -> list[DomainEvent]:
    """An event someone else appended (an operator's removal): fold it, then apply the rules."""
    if e.version <= state.version:
        return []  # folded already: the reactor's own, or read when an append clashed
    state.apply_recorded(e)
    out = _Out(state)
    if e.type == PatternRemoved.topic:
        p = state.patterns.get(e.data.get("pattern_id", ""))
        if p is not None:
            _reject_if_empty(out, p.entity_type)
    return out.events


def _sight(
    out: _Out, p: PatternState, run_id: str, evidence: str, mentions: int, rules: Rules
) -> None:
    if evidence not in p.sightings:
        out.add(
            PatternSighted(pattern_id=p.id, run_id=run_id, evidence=evidence, mentions=mentions)
        )
    if p.active and p.source == "discovered" and p.runs() >= rules.promote_after_runs:
        confidence = max(p.confidence, rules.promoted_confidence)
        out.add(PatternPromoted(pattern_id=p.id, runs=p.runs(), confidence=confidence))
    t = out.state.types.get(p.entity_type)
    if t is not None and t.status == "provisional":
        mentions_now = out.state.type_mentions(t.name)
        if mentions_now >= rules.confirm_after_mentions:
            out.add(EntityTypeConfirmed(name=t.name, mentions=mentions_now))


def _tracked(state: Ontology, p: PatternState) -> bool:
    """Whether the rules count this pattern's sightings: it or its type is not settled for good."""
    if p.source in ("discovered", "promoted"):
        return True
    t = state.types.get(p.entity_type)
    return t is not None and (t.status == "provisional" or t.by_rule)


def _reject_if_empty(out: _Out, type_name: str) -> None:
    t = out.state.types.get(type_name)
    if t is not None and t.status == "provisional" and not out.state.type_has_patterns(type_name):
        out.add(EntityTypeRejected(name=type_name, reason=NO_PATTERN_LEFT))


_RUN_HANDLERS = {
    "PatternProposed": _proposed,
    "PatternMatched": _matched,
    "PatternMatchRetracted": _retracted,
    "PatternProposalRetracted": _retracted,
}
