"""Every projection the projector keeps: register a new one in ``PROJECTIONS``.

Each has its own checkpoint (``(:Checkpoint {projection: <name>})``), follows
the log on its own and can be rebuilt alone (``stageline projections rebuild
--projection <name>``). Pure: importing the registry loads no I/O library.
"""

from __future__ import annotations

from typing import Any

from stageline.errors import InvalidArgument
from stageline.projections import entities, ontology, patterns, pipeline_configs, run_status
from stageline.projections._cypher import entities as entities_graph
from stageline.projections._cypher import ontology as ontology_graph
from stageline.projections._cypher import patterns as patterns_graph
from stageline.projections._cypher import pipelines as pipelines_graph
from stageline.projections._cypher import run_status as run_status_graph
from stageline.projections.projection import Projection

__all__ = [
    "ENTITIES",
    "NAMES",
    "ONTOLOGY",
    "PATTERNS",
    "PIPELINES",
    "PROJECTIONS",
    "RUN_STATUS",
    "get",
]

RUN_STATUS = Projection("run_status", run_status.fold, run_status_graph.WRITER)
"""Runs, their stages, run counts and dead letters (a run's dead letter counts its stage's
stored attempts, so they live in one projection)."""
ENTITIES = Projection("entities", entities.fold, entities_graph.WRITER)
"""Net entity mentions."""
PIPELINES = Projection("pipelines", pipeline_configs.fold, pipelines_graph.WRITER)
"""The workspace's own pipeline configs."""
PATTERNS = Projection("patterns", patterns.fold, patterns_graph.WRITER)
"""Pattern stats: every pattern's state, matches and runs matched."""
ONTOLOGY = Projection("ontology", ontology.fold, ontology_graph.WRITER)
"""Convergence: entity types, counters and the discovery curve."""

PROJECTIONS: tuple[Projection[Any], ...] = (RUN_STATUS, ENTITIES, PIPELINES, PATTERNS, ONTOLOGY)
"""Every projection, in the order a rebuild of all of them runs."""

NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)


def get(name: str) -> Projection[Any]:
    """The registered projection called ``name``; ``InvalidArgument`` naming them all if none."""
    for projection in PROJECTIONS:
        if projection.name == name:
            return projection
    raise InvalidArgument(f"no projection named {name!r}; projections: {', '.join(NAMES)}")
