"""The ontology of a workspace as a fold of its ``ontology`` stream, and its documents.

Pure: no I/O. ``Ontology`` is what the reactor decides from and what the
stages match with (through ``View``); ``Document`` is the versioned JSON form
that ``export`` writes and ``import`` checks, whole, before anything is
appended.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec

from stageline.errors import InvalidArgument
from stageline.events.envelope import RecordedEvent, registry
from stageline.ontology.events import (
    PATTERN_SOURCES,
    TYPE_STATUSES,
    PatternSource,
    TypeStatus,
)

__all__ = [
    "DOCUMENT_FORMAT",
    "DOCUMENT_VERSION",
    "REMOVED_BY_HAND",
    "Document",
    "Ontology",
    "PatternState",
    "Rules",
    "TypeState",
    "View",
    "check_document",
    "pattern_id",
]

REMOVED_BY_HAND = "removed by hand"
"""The reason of an operator's removal (or an import's): discovery never brings it back."""

DOCUMENT_FORMAT = "stageline.ontology"
DOCUMENT_VERSION = 1
MAX_PATTERNS = 10_000
MAX_TYPES = 1_000
MAX_NAME_CHARS = 100

_NAMESPACE = uuid.UUID("6d4c1d0e-8f0e-4c55-9a0e-5f1c2b7d9e31")
TYPE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
_TYPE_NAME = re.compile(TYPE_NAME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def pattern_id(name: str, entity_type: str) -> str:
    """A pattern's id: the same surface text (any case) and type give the same id everywhere."""
    return str(uuid.uuid5(_NAMESPACE, f"{entity_type}\x00{name.casefold()}"))


@dataclass(frozen=True, slots=True)
class Rules:
    """When the reactor promotes and confirms (settings ``PROMOTE_AFTER_RUNS`` and
    ``CONFIRM_AFTER_MENTIONS``)."""

    promote_after_runs: int = 2
    confirm_after_mentions: int = 3
    promoted_confidence: float = 0.8


# -- the fold ------------------------------------------------------------------------


@dataclass(slots=True)
class PatternState:
    id: str
    name: str
    entity_type: str
    confidence: float
    source: str
    is_global: bool = False
    active: bool = True
    base_confidence: float = 0.0
    """The confidence before a promotion: what a demotion goes back to."""
    sightings: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Evidence event id -> (run id, mentions): what the promotion rule counts."""
    removed: str | None = None
    """Why an inactive pattern was removed."""

    @property
    def established(self) -> bool:
        """Trusted: seeded, added by hand or promoted; a discovered pattern is a candidate."""
        return self.source != "discovered"

    def runs(self) -> int:
        return len({run for run, _ in self.sightings.values()})

    def mentions(self) -> int:
        return sum(n for _, n in self.sightings.values())

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "entity_type": self.entity_type,
            "confidence": self.confidence,
            "source": self.source,
            "is_global": self.is_global,
        }


@dataclass(slots=True)
class TypeState:
    name: str
    status: str
    by_rule: bool = False
    """Confirmed by the mention rule, so retracted mentions may demote it again."""


class Ontology:
    """A workspace's types and patterns, folded from its ontology stream (``apply``)."""

    def __init__(self) -> None:
        self.version = -1
        """The ontology stream version folded so far (-1: no stream yet)."""
        self.patterns: dict[str, PatternState] = {}
        self.types: dict[str, TypeState] = {}
        self.hidden: set[str] = set()
        """Ids removed here that this ontology never held: global patterns it opts out of."""

    @classmethod
    def of(cls, events: Iterable[RecordedEvent]) -> Ontology:
        ontology = cls()
        for e in events:
            ontology.apply_recorded(e)
        return ontology

    def apply_recorded(self, e: RecordedEvent) -> None:
        self.apply(e.type, registry.upcast(e.type, e.schema_version, e.data))
        self.version = e.version

    def apply(self, topic: str, d: Mapping[str, Any]) -> None:
        """Fold one ontology event's payload; other topics are ignored."""
        handler = _HANDLERS.get(topic)
        if handler is not None:
            handler(self, d)

    # -- questions -----------------------------------------------------------------

    def active(self) -> list[PatternState]:
        return [p for p in self.patterns.values() if p.active]

    def type_mentions(self, name: str) -> int:
        """Supporting mentions of a type: the live sightings of its active patterns."""
        return sum(
            p.mentions() for p in self.patterns.values() if p.active and p.entity_type == name
        )

    def type_has_patterns(self, name: str) -> bool:
        return any(p.active and p.entity_type == name for p in self.patterns.values())

    def document(self) -> dict[str, Any]:
        """The export document: every type and active pattern, sorted for stable diffs."""
        return {
            "format": DOCUMENT_FORMAT,
            "version": DOCUMENT_VERSION,
            "types": [
                {"name": t.name, "status": t.status}
                for t in sorted(self.types.values(), key=lambda t: t.name)
            ],
            "patterns": [
                {
                    "name": p.name,
                    "entity_type": p.entity_type,
                    "confidence": p.confidence,
                    "source": p.source,
                }
                for p in sorted(
                    (p for p in self.active() if not p.is_global),
                    key=lambda p: (p.entity_type, p.name.casefold()),
                )
            ],
        }

    # -- the handlers --------------------------------------------------------------

    def _type_added(self, d: Mapping[str, Any]) -> None:
        self.types[d["name"]] = TypeState(d["name"], d["status"])

    def _type_proposed(self, d: Mapping[str, Any]) -> None:
        if d["name"] not in self.types:
            self.types[d["name"]] = TypeState(d["name"], "provisional")

    def _pattern_added(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        confidence = float(d["confidence"])
        self.hidden.discard(d["pattern_id"])
        if p is None:
            self.patterns[d["pattern_id"]] = PatternState(
                d["pattern_id"],
                d["name"],
                d["entity_type"],
                confidence,
                d["source"],
                bool(d.get("is_global", False)),
                base_confidence=confidence,
            )
            return
        p.name, p.entity_type, p.confidence, p.source = (
            d["name"],
            d["entity_type"],
            confidence,
            d["source"],
        )
        p.is_global, p.active, p.base_confidence = bool(d.get("is_global", False)), True, confidence
        p.removed = None

    def _pattern_promoted(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        if p is not None:
            p.source, p.confidence = "promoted", float(d["confidence"])

    def _pattern_demoted(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        if p is not None:
            p.source, p.confidence = "discovered", float(d["confidence"])

    def _pattern_removed(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        if p is None:
            self.hidden.add(d["pattern_id"])
        else:
            p.active, p.removed = False, d.get("reason") or REMOVED_BY_HAND

    def _sighted(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        if p is not None:
            p.sightings[d["evidence"]] = (d["run_id"], int(d["mentions"]))

    def _withdrawn(self, d: Mapping[str, Any]) -> None:
        p = self.patterns.get(d["pattern_id"])
        if p is not None:
            p.sightings.pop(d["evidence"], None)

    def _imported(self, d: Mapping[str, Any]) -> None:
        doc = msgspec.convert(d["document"], Document)
        self.types = {t.name: TypeState(t.name, t.status) for t in doc.types}
        keep: set[str] = set()
        for dp in doc.patterns:
            pid = pattern_id(dp.name, dp.entity_type)
            keep.add(pid)
            self._pattern_added(
                {
                    "pattern_id": pid,
                    "name": dp.name,
                    "entity_type": dp.entity_type,
                    "confidence": dp.confidence,
                    "source": dp.source,
                }
            )
        for p in self.patterns.values():
            if p.id not in keep and p.active:
                p.active, p.removed = False, REMOVED_BY_HAND


def _type_status(status: str, *, by_rule: bool) -> Any:
    def handler(self: Ontology, d: Mapping[str, Any]) -> None:
        t = self.types.get(d["name"])
        if t is not None:
            t.status, t.by_rule = status, by_rule

    return handler


_HANDLERS: dict[str, Any] = {
    "EntityTypeAdded": Ontology._type_added,
    "EntityTypeProposed": Ontology._type_proposed,
    "EntityTypeConfirmed": _type_status("confirmed", by_rule=True),
    "EntityTypeDemoted": _type_status("provisional", by_rule=False),
    "EntityTypeRejected": _type_status("rejected", by_rule=False),
    "PatternAdded": Ontology._pattern_added,
    "PatternPromoted": Ontology._pattern_promoted,
    "PatternDemoted": Ontology._pattern_demoted,
    "PatternRemoved": Ontology._pattern_removed,
    "PatternSighted": Ontology._sighted,
    "PatternSightingWithdrawn": Ontology._withdrawn,
    "OntologyImported": Ontology._imported,
}


# -- what the stages match with ----------------------------------------------------------


class View:
    """An immutable snapshot of the patterns a workspace matches: its own and the global ones.

    A workspace pattern overrides a global one with the same id. Where two
    patterns share a surface text, the higher confidence wins, then the
    established one, then the type name, so matching is deterministic.
    """

    def __init__(
        self,
        patterns: Iterable[PatternState],
        types: Mapping[str, str],
        version: tuple[int, int] = (-1, -1),
    ) -> None:
        self.version = version
        self.types = dict(types)
        """Type name -> status."""
        best: dict[str, PatternState] = {}
        for p in patterns:
            key = p.name.casefold()
            held = best.get(key)
            if held is None or _rank(p) > _rank(held):
                best[key] = p
        self.by_surface = best

    @classmethod
    def of(cls, own: Ontology, shared: Ontology | None = None) -> View:
        by_id = {p.id: p for p in shared.active()} if shared is not None else {}
        for pid in own.hidden:
            by_id.pop(pid, None)
        for p in own.patterns.values():  # own patterns override, removed ones hide a global one
            if p.active:
                by_id[p.id] = p
            else:
                by_id.pop(p.id, None)
        types = {t.name: t.status for t in own.types.values()}
        return cls(by_id.values(), types, (own.version, shared.version if shared else -1))

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        if not self.by_surface:
            return None
        alternation = "|".join(
            re.escape(s) for s in sorted(self.by_surface, key=lambda s: (-len(s), s))
        )
        return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.I)

    def known(self, surface: str) -> bool:
        return surface.casefold() in self.by_surface


def _rank(p: PatternState) -> tuple[float, bool, str]:
    return (p.confidence, p.established, p.entity_type)


# -- documents ---------------------------------------------------------------------------


class DocumentType(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    status: TypeStatus = "provisional"


class DocumentPattern(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    entity_type: str
    confidence: float = 0.9
    source: PatternSource = "manual"


class Document(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An ontology as a versioned JSON document: types, then patterns."""

    format: str
    version: int
    types: list[DocumentType] = msgspec.field(default_factory=list)
    patterns: list[DocumentPattern] = msgspec.field(default_factory=list)


def check_type_name(name: Any, *, field: str = "entity_type") -> str:
    if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
        raise InvalidArgument(
            "a type name is 1-64 characters of lowercase letters, digits, '_' and '-', "
            "starting with a letter",
            field=field,
            name=name,
        )
    return name


def check_pattern_name(name: Any, *, field: str = "name") -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or len(name) > MAX_NAME_CHARS
        or _CONTROL.search(name)
    ):
        raise InvalidArgument(
            f"a pattern name is 1-{MAX_NAME_CHARS} characters of text without control "
            "characters or surrounding spaces",
            field=field,
        )
    return name


def check_confidence(value: Any, *, field: str = "confidence") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise InvalidArgument("confidence must be a number from 0 to 1", field=field)
    return float(value)


def check_document(raw: Any) -> Document:
    """The document ``raw`` (parsed JSON) as a ``Document``, or ``InvalidArgument`` naming
    the first problem: a wrong format or version, a bad or repeated name, a pattern of a type
    the document lacks or has rejected, a confidence outside 0..1, too many entries."""
    if not isinstance(raw, dict):
        raise InvalidArgument("an ontology document is a JSON object")
    if raw.get("format") != DOCUMENT_FORMAT:
        raise InvalidArgument(
            f"format must be {DOCUMENT_FORMAT!r}", field="format", found=raw.get("format")
        )
    if raw.get("version") != DOCUMENT_VERSION:
        raise InvalidArgument(
            f"unsupported document version; this stageline reads version {DOCUMENT_VERSION}",
            field="version",
            found=raw.get("version"),
        )
    try:
        doc = msgspec.convert(raw, Document)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid ontology document: {exc}") from None
    if len(doc.types) > MAX_TYPES or len(doc.patterns) > MAX_PATTERNS:
        raise InvalidArgument(
            f"a document holds at most {MAX_TYPES} types and {MAX_PATTERNS} patterns",
            types=len(doc.types),
            patterns=len(doc.patterns),
        )
    statuses: dict[str, str] = {}
    for i, t in enumerate(doc.types):
        check_type_name(t.name, field=f"types[{i}].name")
        if t.name in statuses:
            raise InvalidArgument(f"type {t.name!r} is repeated", field=f"types[{i}].name")
        statuses[t.name] = t.status
    seen: set[str] = set()
    for i, p in enumerate(doc.patterns):
        at = f"patterns[{i}]"
        check_pattern_name(p.name, field=f"{at}.name")
        check_confidence(p.confidence, field=f"{at}.confidence")
        status = statuses.get(p.entity_type)
        if status is None:
            raise InvalidArgument(
                f"pattern {p.name!r} names type {p.entity_type!r}, which the document lacks",
                field=f"{at}.entity_type",
            )
        if status == "rejected":
            raise InvalidArgument(
                f"pattern {p.name!r} names the rejected type {p.entity_type!r}",
                field=f"{at}.entity_type",
            )
        pid = pattern_id(p.name, p.entity_type)
        if pid in seen:
            raise InvalidArgument(
                f"pattern {p.name!r} ({p.entity_type}) is repeated", field=f"{at}.name"
            )
        seen.add(pid)
    return doc


assert set(PATTERN_SOURCES) == set(PatternSource.__args__)  # type: ignore[attr-defined]
assert set(TYPE_STATUSES) == set(TypeStatus.__args__)  # type: ignore[attr-defined]
