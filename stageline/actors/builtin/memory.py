"""The built-in stages of the ``memory-ingest`` pipeline and the domain events they emit.

Pure and deterministic: the same item always yields the same output and events.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stageline.actors.stage import ActorRegistry, StageContext, StageError, StageResult
from stageline.events.envelope import DomainEvent, RecordedEvent
from stageline.ontology.discover import candidates
from stageline.ontology.events import (
    PatternMatched,
    PatternMatchRetracted,
    PatternProposalRetracted,
    PatternProposed,
)
from stageline.ontology.model import PatternState, View, pattern_id
from stageline.ontology.seed import seed_view

OntologyLoader = Callable[[str], Awaitable[View]]
"""Workspace -> the patterns it matches now (``ontology.store.OntologyCache.view``)."""


class MemoryNormalized(DomainEvent, frozen=True, kw_only=True):
    topic = "MemoryNormalized"

    item_id: str | None
    source: str | None
    chars: int
    words: int
    sha256: str


class MemoryClassified(DomainEvent, frozen=True, kw_only=True):
    topic = "MemoryClassified"

    memory_type: str
    rule: str


class EntityMentioned(DomainEvent, frozen=True, kw_only=True):
    topic = "EntityMentioned"

    entity: str
    entity_type: str
    surface: str
    start: int
    end: int
    pattern_id: str | None = None


class EntityMentionRetracted(DomainEvent, frozen=True, kw_only=True):
    """Reverses an ``EntityMentioned`` (undo or compensation): the mention no longer counts."""

    topic = "EntityMentionRetracted"

    compensates: str
    entity: str
    entity_type: str


class MemorySummarized(DomainEvent, frozen=True, kw_only=True):
    topic = "MemorySummarized"

    summary: str
    keywords: list[str]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]+")


def normalize(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Validate the item and clean its text: NFC, no control characters, single spaces."""
    text = item.get("text")
    if not isinstance(text, str):
        raise StageError("item.text must be a string", permanent=True)
    clean = _SPACE.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", text))).strip()
    if not clean:
        raise StageError("item.text is empty after normalization", permanent=True)
    words = len(clean.split(" "))
    event = MemoryNormalized(
        item_id=item.get("id"),
        source=item.get("source"),
        chars=len(clean),
        words=words,
        sha256=hashlib.sha256(clean.encode()).hexdigest(),
    )
    return StageResult(
        output={"text": clean}, events=[event], metadata={"chars": len(clean), "words": words}
    )


_RULES: list[tuple[str, str, re.Pattern[str]]] = [
    ("question", "interrogative", re.compile(r"\?\s*$|^(who|what|when|where|why|how)\b", re.I)),
    (
        "task",
        "obligation",
        re.compile(r"\b(todo|to do|need to|must|remember to|deadline|should)\b", re.I),
    ),
    (
        "preference",
        "first-person-taste",
        re.compile(r"\bI (like|love|prefer|hate|enjoy|dislike)\b"),
    ),
    (
        "event",
        "time-reference",
        re.compile(
            r"\b(yesterday|today|tomorrow|meeting|met|workshop|flight|dinner|retro|"
            r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
            r"\d{1,2}(:\d{2})?\s?(am|pm)|\d{4}-\d{2}-\d{2})\b",
            re.I,
        ),
    ),
    ("fact", "copula", re.compile(r"\b(is|are|was|were|has|have|uses|runs|stores)\b", re.I)),
]


def classify(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Give the item a memory type by the first of a fixed list of rules that matches."""
    text = item["text"]
    memory_type, rule = "note", "default"
    for kind, name, pattern in _RULES:
        if pattern.search(text):
            memory_type, rule = kind, name
            break
    return StageResult(
        output={"memory_type": memory_type},
        events=[MemoryClassified(memory_type=memory_type, rule=rule)],
        metadata={"memory_type": memory_type, "rule": rule},
    )


def _view(ctx: StageContext) -> View:
    """The patterns the workspace matches with, as loaded for this call (the seed by default)."""
    return ctx.state if isinstance(ctx.state, View) else seed_view()


def extract(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Record a mention for every known pattern in the text (longest match first), and one
    ``PatternMatched`` per pattern with its count: the evidence the ontology's rules use."""
    view = _view(ctx)
    events: list[DomainEvent] = []
    entities: list[dict[str, Any]] = []
    matched: dict[str, tuple[PatternState, int]] = {}
    for m in view.regex.finditer(item["text"]) if view.regex is not None else ():
        p = view.by_surface[m.group(0).casefold()]
        events.append(
            EntityMentioned(
                entity=p.name,
                entity_type=p.entity_type,
                surface=m.group(0),
                start=m.start(),
                end=m.end(),
                pattern_id=p.id,
            )
        )
        entities.append(
            {"entity": p.name, "type": p.entity_type, "start": m.start(), "end": m.end()}
        )
        matched[p.id] = (p, matched[p.id][1] + 1 if p.id in matched else 1)
    for p, count in matched.values():
        events.append(
            PatternMatched(
                pattern_id=p.id,
                name=p.name,
                entity_type=p.entity_type,
                source=p.source,  # type: ignore[arg-type]
                is_global=p.is_global,
                mentions=count,
                established=p.established,
            )
        )
    return StageResult(
        output={"entities": entities},
        events=events,
        metadata={"mentions": len(entities), "patterns": len(matched)},
    )


def retract_mentions(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    """Compensate ``extract``: retract each mention and each pattern match it recorded."""
    out: list[DomainEvent] = []
    for e in effects:
        if e.type == EntityMentioned.topic:
            out.append(
                EntityMentionRetracted(
                    compensates=str(e.event_id),
                    entity=e.data["entity"],
                    entity_type=e.data["entity_type"],
                )
            )
        elif e.type == PatternMatched.topic:
            out.append(
                PatternMatchRetracted(
                    compensates=str(e.event_id),
                    pattern_id=e.data["pattern_id"],
                    mentions=e.data["mentions"],
                    established=e.data["established"],
                )
            )
    return out


def discover(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Propose a candidate pattern for every capitalized name no known pattern covers.

    The ontology reactor adds each candidate as a ``discovered`` pattern (and
    its type, if new) and promotes it once enough distinct runs saw it.
    """
    view = _view(ctx)
    text = item["text"]
    if isinstance(item.get("entities"), list):
        # what extract matched, not what this view knows: a pattern added between the two
        # stages was not matched by this run, so proposing it again counts as a sighting
        covered = [(e["start"], e["end"]) for e in item["entities"] if "start" in e]
    elif view.regex is not None:
        covered = [(m.start(), m.end()) for m in view.regex.finditer(text)]
    else:
        covered = []
    found = [c for c in candidates(text, covered) if view.types.get(c.entity_type) != "rejected"]
    events: list[DomainEvent] = [
        PatternProposed(
            pattern_id=pattern_id(c.name, c.entity_type),
            name=c.name,
            entity_type=c.entity_type,
            confidence=c.confidence,
            rule=c.rule,
            start=c.start,
            end=c.end,
        )
        for c in found
    ]
    return StageResult(
        output={"candidates": [{"name": c.name, "type": c.entity_type} for c in found]},
        events=events,
        metadata={"candidates": len(found)},
    )


def retract_proposals(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    """Compensate ``discover``: retract each proposal it recorded."""
    return [
        PatternProposalRetracted(compensates=str(e.event_id), pattern_id=e.data["pattern_id"])
        for e in effects
        if e.type == PatternProposed.topic
    ]


_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "that",
        "this",
        "from",
        "about",
        "into",
        "over",
        "under",
        "have",
        "has",
        "had",
        "were",
        "was",
        "are",
        "is",
        "will",
        "would",
        "should",
        "could",
        "their",
        "there",
        "them",
        "they",
        "then",
        "than",
        "when",
        "what",
        "which",
        "while",
        "who",
        "why",
        "how",
        "been",
        "being",
        "also",
        "just",
        "only",
        "very",
        "more",
        "most",
        "some",
        "such",
        "each",
        "every",
        "other",
        "after",
        "before",
        "need",
        "must",
        "remember",
        "todo",
    ]
)


def summarize(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """The first sentence cut to ``max_words`` words, and the five most frequent keywords."""
    max_words = int(ctx.params.get("max_words", 24))
    text = item["text"]
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    words = sentence.split(" ")
    summary = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    counts = Counter(
        w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 3
    )
    keywords = [w for w, _ in counts.most_common(5)]
    return StageResult(
        output={"summary": summary, "keywords": keywords},
        events=[MemorySummarized(summary=summary, keywords=keywords)],
        metadata={"keywords": len(keywords)},
    )


def register(actors: ActorRegistry, ontology: OntologyLoader | None = None) -> ActorRegistry:
    """Add the memory-ingest stages to ``actors``.

    ``ontology`` loads a workspace's current patterns for ``extract`` and
    ``discover``; without it they match the seed ontology only.
    """
    actors.register("normalize", normalize)
    actors.register("classify", classify)
    actors.register("extract", extract, compensate=retract_mentions, load=ontology)
    actors.register("discover", discover, compensate=retract_proposals, load=ontology)
    actors.register("summarize", summarize)
    return actors
