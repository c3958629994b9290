"""Discovery rules: deterministic candidates for capitalized names no pattern covers."""

from __future__ import annotations

import pytest

from stageline.ontology.discover import candidates, entity_type_of
from stageline.ontology.seed import seed_view


def found(text: str) -> list[tuple[str, str]]:
    view = seed_view()
    assert view.regex is not None
    covered = [(m.start(), m.end()) for m in view.regex.finditer(text)]
    return [(c.name, c.entity_type) for c in candidates(text, covered)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Vespucci Labs is a new vendor.", [("Vespucci Labs", "organization")]),
        ("The Orbital Gateway project replaces it.", [("Orbital Gateway", "product")]),
        ("I prefer PostgreSQL over MySQL.", [("MySQL", "technology")]),
        ("The PSF runs PyCon US every spring.", [("PyCon US", "event")]),
        ("It answers Cypher queries.", [("Cypher", "concept")]),
        ("We met in Maple Valley.", [("Maple Valley", "place")]),
        ("Kickoff for Project Orion.", [("Project Orion", "project")]),
    ],
)
def test_rules_type_names_by_their_words(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Met Alice in Berlin yesterday.",  # a lone capital opening a sentence, known names
        "Dinner with Erin on Friday.",  # weekdays are no entities
        "Todo: Rotate the keys.",  # opens a sentence after a colon
        "Ask the US team.",  # an acronym alone
        "Redis and Kafka in Tokyo.",  # all known
    ],
)
def test_nothing_is_proposed_for_known_or_uninformative_capitals(text: str) -> None:
    assert found(text) == []


def test_known_names_split_a_sequence_and_each_name_is_proposed_once() -> None:
    text = "Grace Hopper Fans met Zephyr Labs and Zephyr Labs again."
    assert found(text) == [("Fans", "concept"), ("Zephyr Labs", "organization")]


def test_the_type_depends_on_the_name_alone() -> None:
    assert entity_type_of(["Orbital", "Gateway"]) == entity_type_of(["Orbital", "Gateway"])
    assert entity_type_of(["NASA"]) is None
