"""Discovery: the deterministic rules that propose candidate patterns for unknown names.

Pure. A candidate is a run of capitalized words (at most four) that no known
pattern covers; a single word must not open its sentence (there, capitals say
nothing). Its type comes from the words alone, by the first rule that fits,
so the same name always gets the same type and therefore the same pattern id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Candidate", "candidates", "entity_type_of"]


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    entity_type: str
    confidence: float
    rule: str
    start: int
    end: int


_ORG = frozenset(
    [
        "Labs",
        "Lab",
        "Inc",
        "Corp",
        "Corporation",
        "Ltd",
        "LLC",
        "GmbH",
        "Analytics",
        "Systems",
        "Group",
        "Foundation",
        "Health",
        "Bank",
        "University",
        "Institute",
        "Partners",
        "Technologies",
        "Software",
        "Ventures",
        "Capital",
    ]
)
_PLACE = frozenset(
    ["City", "Street", "Valley", "Bay", "Island", "County", "River", "Mountains", "Park", "Harbor"]
)
_PRODUCT = frozenset(
    ["Gateway", "Platform", "Studio", "Cloud", "Engine", "Hub", "Console", "Suite"]
)
_EVENT = frozenset(["Summit", "Conference", "Meetup", "Festival", "Expo", "Hackathon", "Con"])
_SKIP = frozenset(
    [
        "I",
        "A",
        "An",
        "The",
        "This",
        "That",
        "These",
        "Those",
        "It",
        "We",
        "You",
        "He",
        "She",
        "They",
        "Our",
        "My",
        "Your",
        "Their",
        "Its",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
        "Mr",
        "Mrs",
        "Ms",
        "Dr",
    ]
)

_SEQUENCE = re.compile(
    r"[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?:[ ][A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)*"
)
_CAMEL = re.compile(r"^[A-Z]?[a-z]+[A-Z][A-Za-z0-9]*$|^[A-Za-z]+[0-9]+[A-Za-z0-9]*$")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$")
MAX_WORDS = 4


def entity_type_of(words: list[str]) -> tuple[str, float, str] | None:
    """(type, confidence, rule) for a capitalized name, or None when no rule fits."""
    last = words[-1]
    if len(words) > 1 and last in _ORG:
        return "organization", 0.6, "organization-suffix"
    if len(words) > 1 and last in _PLACE:
        return "place", 0.6, "place-suffix"
    if len(words) > 1 and last in _PRODUCT:
        return "product", 0.55, "product-suffix"
    if len(words) > 1 and words[0] == "Project":
        return "project", 0.6, "project-prefix"
    if any(w in _EVENT or re.search(r"[a-z]Con$", w) for w in words):
        return "event", 0.5, "event-word"
    if len(words) == 1 and _CAMEL.match(last):
        return "technology", 0.5, "camel-case"
    if len(words) == 1 and last.isupper():
        return None  # an acronym alone says too little
    return "concept", 0.4 if len(words) == 1 else 0.45, "capitalized"


def candidates(text: str, covered: list[tuple[int, int]]) -> list[Candidate]:
    """Candidates in ``text`` outside the ``covered`` spans (known patterns' matches).

    Each distinct name once, in order of first appearance.
    """
    out: list[Candidate] = []
    seen: set[str] = set()
    for m in _SEQUENCE.finditer(text):
        for start, end in _pieces(m.start(), m.group(0), covered):
            words = text[start:end].split(" ")
            first_of_sentence = start == m.start() and _opens_sentence(text, start)
            while words and words[0] in _SKIP:  # "The Orbital Gateway" -> "Orbital Gateway"
                start += len(words[0]) + 1
                words = words[1:]
                first_of_sentence = False
            while words and words[-1] in _SKIP:
                end -= len(words[-1]) + 1
                words = words[:-1]
            if not words or len(words) > MAX_WORDS or (len(words) == 1 and first_of_sentence):
                continue
            if len(words) == 1 and len(words[0]) < 3:
                continue
            typed = entity_type_of(words)
            name = " ".join(words)
            if typed is None or name.casefold() in seen:
                continue
            seen.add(name.casefold())
            out.append(Candidate(name, typed[0], typed[1], typed[2], start, start + len(name)))
    return out


def _opens_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or bool(_SENTENCE_END.search(before))


def _pieces(offset: int, sequence: str, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of a word sequence at ``offset`` that no covered span touches, word by word."""
    pieces: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    position = offset
    for word in sequence.split(" "):
        start, end = position, position + len(word)
        position = end + 1
        if any(s < end and start < e for s, e in covered):
            if current is not None:
                pieces.append(current)
            current = None
        elif current is None:
            current = (start, end)
        else:
            current = (current[0], end)
    if current is not None:
        pieces.append(current)
    return pieces
