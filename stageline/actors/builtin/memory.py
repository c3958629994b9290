"""The built-in stages of the ``memory-ingest`` pipeline and the domain events they emit.

Pure and deterministic: the same item always yields the same output and events.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from stageline.actors.stage import ActorRegistry, StageContext, StageError, StageResult
from stageline.events.envelope import DomainEvent, RecordedEvent


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


@cache
def seed_ontology() -> dict[str, Any]:
    """The shipped seed ontology: entity types and surface patterns."""
    raw = resources.files("stageline.data").joinpath("seed_ontology.json").read_text()
    ontology: dict[str, Any] = json.loads(raw)
    return ontology


@cache
def _matcher() -> tuple[re.Pattern[str], dict[str, tuple[str, str]]]:
    patterns = seed_ontology()["patterns"]
    by_surface = {p["name"].lower(): (p["name"], p["entity_type"]) for p in patterns}
    alternation = "|".join(re.escape(s) for s in sorted(by_surface, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternation})\b", re.I), by_surface


def extract(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Record a mention for every seed pattern found in the text (longest match first)."""
    pattern, by_surface = _matcher()
    events: list[DomainEvent] = []
    entities: list[dict[str, str]] = []
    for m in pattern.finditer(item["text"]):
        name, entity_type = by_surface[m.group(0).lower()]
        events.append(
            EntityMentioned(
                entity=name,
                entity_type=entity_type,
                surface=m.group(0),
                start=m.start(),
                end=m.end(),
            )
        )
        entities.append({"entity": name, "type": entity_type})
    return StageResult(
        output={"entities": entities}, events=events, metadata={"mentions": len(entities)}
    )


def retract_mentions(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    """Compensate ``extract``: retract each mention it recorded."""
    return [
        EntityMentionRetracted(
            compensates=str(e.event_id), entity=e.data["entity"], entity_type=e.data["entity_type"]
        )
        for e in effects
        if e.type == EntityMentioned.topic
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


def register(actors: ActorRegistry) -> ActorRegistry:
    """Add the memory-ingest stages to ``actors``."""
    actors.register("normalize", normalize)
    actors.register("classify", classify)
    actors.register("extract", extract, compensate=retract_mentions)
    actors.register("summarize", summarize)
    return actors
