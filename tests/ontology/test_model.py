"""The ontology fold, the matching view and the import document's checks (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ontology_helpers import Log, seeded

from stageline.errors import InvalidArgument
from stageline.ontology.events import OntologyImported, PatternAdded, PatternRemoved
from stageline.ontology.model import Ontology, View, check_document, pattern_id
from stageline.ontology.seed import seed_document, seed_view


def test_pattern_ids_ignore_case_but_not_type() -> None:
    assert pattern_id("Redis", "technology") == pattern_id("REDIS", "technology")
    assert pattern_id("Apple", "organization") != pattern_id("Apple", "product")


def test_the_seed_folds_into_seed_types_and_patterns() -> None:
    state = seeded(Log())
    doc = seed_document()
    assert {t.status for t in state.types.values()} == {"seed"}
    assert len(state.types) == len(doc.types)
    assert len(state.active()) == len(doc.patterns)
    assert {p.source for p in state.active()} == {"seed"}


def test_export_then_import_reproduces_the_same_document() -> None:
    log = Log()
    state = seeded(log)
    state.apply_recorded(
        log.ontology(
            PatternAdded(
                pattern_id=pattern_id("Orbital Gateway", "product"),
                name="Orbital Gateway",
                entity_type="product",
                confidence=0.55,
                source="discovered",
            )
        )
    )
    state.apply_recorded(
        log.ontology(PatternRemoved(pattern_id=pattern_id("Bob", "person"), reason="x"))
    )
    doc = state.document()
    other = Ontology.of([Log().ontology(OntologyImported(document=check_document_dict(doc)))])
    assert other.document() == doc


def check_document_dict(doc: dict[str, Any]) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(check_document(doc))  # type: ignore[no-any-return]


def test_import_replaces_patterns_and_types_not_in_the_document() -> None:
    log = Log()
    state = seeded(log)
    doc = {
        "format": "stageline.ontology",
        "version": 1,
        "types": [{"name": "person", "status": "confirmed"}],
        "patterns": [{"name": "Zed", "entity_type": "person"}],
    }
    state.apply_recorded(log.ontology(OntologyImported(document=check_document_dict(doc))))
    assert list(state.types) == ["person"]
    assert [p.name for p in state.active()] == ["Zed"]
    assert state.patterns[pattern_id("Alice", "person")].removed == "removed by hand"


GOOD: dict[str, Any] = {
    "format": "stageline.ontology",
    "version": 1,
    "types": [{"name": "person", "status": "seed"}, {"name": "gone", "status": "rejected"}],
    "patterns": [{"name": "Alice", "entity_type": "person", "confidence": 0.9, "source": "seed"}],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["patterns"][0].update(entity_type="robot"), "patterns[0].entity_type"),
        (lambda d: d["patterns"][0].update(entity_type="gone"), "patterns[0].entity_type"),
        (lambda d: d["patterns"][0].update(confidence=2), "patterns[0].confidence"),
        (lambda d: d["patterns"][0].update(confidence=float("nan")), "patterns[0].confidence"),
        (lambda d: d["patterns"].append(dict(d["patterns"][0], name="ALICE")), "patterns[1].name"),
        (lambda d: d["patterns"][0].update(name=" Alice"), "patterns[0].name"),
        (lambda d: d["patterns"][0].update(name="a\nb"), "patterns[0].name"),
        (lambda d: d["types"].append({"name": "person"}), "types[2].name"),
        (lambda d: d["types"][0].update(name="Person!"), "types[0].name"),
    ],
)
def test_an_invalid_document_names_the_field(change: Any, field: str) -> None:
    doc = copy.deepcopy(GOOD)
    change(doc)
    with pytest.raises(InvalidArgument) as err:
        check_document(doc)
    assert err.value.details.get("field") == field


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"format": "stageline.ontology", "version": 1, "types": [], "extra": 1},
        {"format": "stageline.ontology", "version": 1, "types": [{"name": "x", "status": "odd"}]},
        {"format": "stageline.ontology", "version": 1, "patterns": [{"name": "A"}]},
    ],
)
def test_malformed_documents_are_invalid(doc: Any) -> None:
    with pytest.raises(InvalidArgument):
        check_document(doc)


def test_check_document_accepts_the_good_one() -> None:
    assert check_document(GOOD).patterns[0].name == "Alice"


def test_the_view_prefers_confidence_then_established_and_lets_own_patterns_hide_globals() -> None:
    shared = Ontology()
    shared.apply(
        "PatternAdded",
        {
            "pattern_id": pattern_id("Apple", "organization"),
            "name": "Apple",
            "entity_type": "organization",
            "confidence": 0.9,
            "source": "manual",
            "is_global": True,
        },
    )
    own = Ontology()
    own.apply(
        "PatternAdded",
        {
            "pattern_id": pattern_id("apple", "fruit"),
            "name": "apple",
            "entity_type": "fruit",
            "confidence": 0.5,
            "source": "discovered",
        },
    )
    view = View.of(own, shared)
    assert view.by_surface["apple"].entity_type == "organization"  # higher confidence
    own.apply("PatternRemoved", {"pattern_id": pattern_id("Apple", "organization"), "reason": "x"})
    view = View.of(own, shared)
    assert view.by_surface["apple"].entity_type == "fruit"  # the global one is hidden here
    assert view.regex is not None and view.regex.search("an Apple a day")


def test_the_view_matches_whole_words_only() -> None:
    view = seed_view()
    assert view.regex is not None
    assert [m.group(0) for m in view.regex.finditer("Bobby met Bob; Redis-cluster, Rust.")] == [
        "Bob",
        "Redis",
        "Rust",
    ]
