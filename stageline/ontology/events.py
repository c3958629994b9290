"""The ontology's events: entity types and entity patterns of a workspace.

Two places hold them. The workspace's ``ontology`` stream holds the ontology
itself: what was seeded, added by hand, imported, discovered, promoted,
demoted, removed, and the evidence the promotion rules count (sightings). A
run's stream holds what its stages saw: the patterns ``extract`` matched and
the candidates ``discover`` proposed, and their retraction when the stage or
the run is compensated. The ontology reactor turns the second kind into the
first.
"""

from __future__ import annotations

from typing import Any, Literal

from stageline.events.envelope import DomainEvent

PatternSource = Literal["seed", "discovered", "promoted", "manual"]
TypeStatus = Literal["seed", "provisional", "confirmed", "rejected"]

PATTERN_SOURCES: tuple[str, ...] = ("seed", "discovered", "promoted", "manual")
TYPE_STATUSES: tuple[str, ...] = ("seed", "provisional", "confirmed", "rejected")


# -- the ontology stream --------------------------------------------------------------


class EntityTypeAdded(DomainEvent, frozen=True, kw_only=True):
    """A type set by the seed or by hand, with its status (an existing type takes it)."""

    topic = "EntityTypeAdded"

    name: str
    status: TypeStatus


class EntityTypeProposed(DomainEvent, frozen=True, kw_only=True):
    """A new type, provisional, because a discovered pattern named it."""

    topic = "EntityTypeProposed"

    name: str
    pattern_id: str
    run_id: str | None = None


class EntityTypeConfirmed(DomainEvent, frozen=True, kw_only=True):
    """A provisional type reached the supporting mentions the rule asks for."""

    topic = "EntityTypeConfirmed"

    name: str
    mentions: int


class EntityTypeDemoted(DomainEvent, frozen=True, kw_only=True):
    """Compensates a confirmation: retracted mentions took the type below the rule."""

    topic = "EntityTypeDemoted"

    name: str
    mentions: int


class EntityTypeRejected(DomainEvent, frozen=True, kw_only=True):
    """A provisional type lost its last pattern; discovery proposes nothing more for it."""

    topic = "EntityTypeRejected"

    name: str
    reason: str


class PatternAdded(DomainEvent, frozen=True, kw_only=True):
    """A pattern: seeded, discovered, or added (or overridden) by hand.

    Adding an existing pattern id again overrides its confidence and source.
    """

    topic = "PatternAdded"

    pattern_id: str
    name: str
    entity_type: str
    confidence: float
    source: PatternSource
    is_global: bool = False
    run_id: str | None = None  # the run whose discover stage proposed it


class PatternPromoted(DomainEvent, frozen=True, kw_only=True):
    """A discovered pattern was seen in enough distinct runs to be trusted."""

    topic = "PatternPromoted"

    pattern_id: str
    runs: int
    confidence: float


class PatternDemoted(DomainEvent, frozen=True, kw_only=True):
    """Compensates a promotion: withdrawn sightings took the pattern below the rule."""

    topic = "PatternDemoted"

    pattern_id: str
    runs: int
    confidence: float


class PatternRemoved(DomainEvent, frozen=True, kw_only=True):
    """The pattern no longer matches: removed by hand, or its only sightings were withdrawn."""

    topic = "PatternRemoved"

    pattern_id: str
    reason: str


class PatternSighted(DomainEvent, frozen=True, kw_only=True):
    """Evidence for the rules: a run matched or proposed a discovered pattern.

    ``evidence`` is the id of the run-stream event that saw it.
    """

    topic = "PatternSighted"

    pattern_id: str
    run_id: str
    evidence: str
    mentions: int


class PatternSightingWithdrawn(DomainEvent, frozen=True, kw_only=True):
    """The run-stream event behind a sighting was compensated."""

    topic = "PatternSightingWithdrawn"

    pattern_id: str
    run_id: str
    evidence: str


class OntologyImported(DomainEvent, frozen=True, kw_only=True):
    """The workspace's ontology replaced, as a whole, by a document (``model.Document``).

    Patterns and types not in the document are gone; sightings are kept.
    """

    topic = "OntologyImported"

    document: dict[str, Any]


# -- a run's stream ------------------------------------------------------------------


class PatternMatched(DomainEvent, frozen=True, kw_only=True):
    """``extract`` matched a pattern ``mentions`` times in the run's item."""

    topic = "PatternMatched"

    pattern_id: str
    name: str
    entity_type: str
    source: PatternSource
    is_global: bool
    mentions: int
    established: bool
    """The pattern was trusted (seed, manual or promoted), not a candidate, when it matched."""


class PatternMatchRetracted(DomainEvent, frozen=True, kw_only=True):
    """Compensates a ``PatternMatched``."""

    topic = "PatternMatchRetracted"

    compensates: str
    pattern_id: str
    mentions: int
    established: bool


class PatternProposed(DomainEvent, frozen=True, kw_only=True):
    """``discover`` found a name no pattern knows and proposes it as a candidate."""

    topic = "PatternProposed"

    pattern_id: str
    name: str
    entity_type: str
    confidence: float
    rule: str
    start: int
    end: int


class PatternProposalRetracted(DomainEvent, frozen=True, kw_only=True):
    """Compensates a ``PatternProposed``."""

    topic = "PatternProposalRetracted"

    compensates: str
    pattern_id: str


ONTOLOGY_TOPICS = frozenset(
    cls.topic
    for cls in (
        EntityTypeAdded,
        EntityTypeProposed,
        EntityTypeConfirmed,
        EntityTypeDemoted,
        EntityTypeRejected,
        PatternAdded,
        PatternPromoted,
        PatternDemoted,
        PatternRemoved,
        PatternSighted,
        PatternSightingWithdrawn,
        OntologyImported,
    )
)
"""What the ontology stream holds; its fold is ``model.Ontology``."""

EVIDENCE_TOPICS = frozenset(
    cls.topic
    for cls in (PatternMatched, PatternMatchRetracted, PatternProposed, PatternProposalRetracted)
)
"""What runs record about patterns; the reactor turns them into ontology events."""
