"""The ``pipelines`` projection's pure fold: one row per workspace config, its latest version.

Only events on ``pipeline-<name>`` streams count, and a ``PipelineDefined``
only when it is a definition the catalog would load (``configs.defined``), so
the list and the catalog always agree. A deleted config keeps its row,
marked ``deleted``; defining it again brings it back at its next version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stageline.actors.configs import PipelineDefined, PipelineDeleted, defined
from stageline.events import RecordedEvent
from stageline.events.keys import PIPELINE_STREAM_PREFIX
from stageline.projections.batch import Handler, fold_into
from stageline.projections.changes import PipelineChanges

__all__ = ["HANDLERS", "PIPELINE_FIELDS", "fold"]

PIPELINE_FIELDS = (
    "version",
    "description",
    "stages",
    "actors",
    "deleted",
    "defined_at",
    "updated_at",
)
"""Every property a change may set on a ``PipelineConfig`` row (besides its key, ``name``)."""

PipelineHandler = Handler[PipelineChanges]

_CUT = len(PIPELINE_STREAM_PREFIX)


def _defined(b: PipelineChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    if not stream.startswith(PIPELINE_STREAM_PREFIX):
        return
    name = stream[_CUT:]
    pipeline = defined(e, name)
    if pipeline is None:
        return
    b.pipeline(name).fields.update(
        version=pipeline.version,
        description=pipeline.description,
        stages=pipeline.stage_names,
        actors=[s.actor for s in pipeline.stages],
        deleted=False,
        defined_at=at,
        updated_at=at,
    )


def _deleted(b: PipelineChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    if not stream.startswith(PIPELINE_STREAM_PREFIX):
        return
    b.pipeline(stream[_CUT:]).fields.update(deleted=True, updated_at=at)


HANDLERS: dict[str, PipelineHandler] = {
    PipelineDefined.topic: _defined,
    PipelineDeleted.topic: _deleted,
}
"""Config event type (counted on ``pipeline-<name>`` streams only) -> how it changes the view."""

_FOLD = {topic: (h, False) for topic, h in HANDLERS.items()}


def fold(events: Iterable[RecordedEvent]) -> PipelineChanges:
    """Fold a batch of log events (oldest first) into the ``pipelines`` changes."""
    return fold_into(PipelineChanges(), events, _FOLD)
