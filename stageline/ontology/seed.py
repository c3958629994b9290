"""The shipped seed ontology, and the events that load it into a workspace."""

from __future__ import annotations

import json
import uuid
from functools import cache
from importlib import resources
from typing import Any

import msgspec

from stageline.events.envelope import DomainEvent
from stageline.ontology.events import EntityTypeAdded, PatternAdded
from stageline.ontology.model import Document, Ontology, View, check_document, pattern_id

__all__ = ["SEED_NAMESPACE", "seed_document", "seed_events", "seed_view"]

SEED_NAMESPACE = uuid.UUID("0b1e7a35-3c2d-4f6a-8e9b-7d5c4a3b2e1f")
"""Seed event ids are uuid5(SEED_NAMESPACE, <index>): loading twice appends once."""


@cache
def seed_document() -> Document:
    raw: dict[str, Any] = json.loads(
        resources.files("stageline.data").joinpath("seed_ontology.json").read_text()
    )
    return check_document(raw)


def seed_events() -> list[DomainEvent]:
    """Every seed type (status ``seed``), then every seed pattern (source ``seed``)."""
    doc = seed_document()
    types: list[DomainEvent] = [EntityTypeAdded(name=t.name, status="seed") for t in doc.types]
    patterns: list[DomainEvent] = [
        PatternAdded(
            pattern_id=pattern_id(p.name, p.entity_type),
            name=p.name,
            entity_type=p.entity_type,
            confidence=p.confidence,
            source="seed",
        )
        for p in doc.patterns
    ]
    return types + patterns


@cache
def seed_view() -> View:
    """What a workspace matches with before anything but the seed is known."""
    ontology = Ontology()
    for event in seed_events():
        ontology.apply(event.topic, msgspec.to_builtins(event))
    return View.of(ontology)
