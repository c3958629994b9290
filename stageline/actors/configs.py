"""Named pipeline configs as events: each config is a stream ``pipeline-<name>``.

``PipelineDefined`` records a full definition; ``PipelineDeleted`` ends the
config (its versions stay readable, for the runs that use them). A config's
version is 1 + the stream version of the ``PipelineDefined`` that holds it,
and the event carries it too, so exact versions are found by one direct read
and versions only grow, across deletes and re-creations. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from stageline.actors.pipeline import Pipeline, StageSpec
from stageline.events.envelope import DomainEvent, RecordedEvent, registry

__all__ = [
    "ConfigState",
    "ConfigVersion",
    "PipelineDefined",
    "PipelineDeleted",
    "defined",
    "fold_config",
    "stream_version_of",
]


class PipelineDefined(DomainEvent, frozen=True, kw_only=True):
    """Version ``version`` of the config ``name``: its whole definition."""

    topic = "PipelineDefined"

    name: str
    version: int
    description: str = ""
    stages: tuple[StageSpec, ...]

    @classmethod
    def of(cls, pipeline: Pipeline, version: int) -> PipelineDefined:
        return cls(
            name=pipeline.name,
            version=version,
            description=pipeline.description,
            stages=pipeline.stages,
        )

    def pipeline(self) -> Pipeline:
        return Pipeline(
            name=self.name,
            version=self.version,
            description=self.description,
            stages=tuple(self.stages),
        )


class PipelineDeleted(DomainEvent, frozen=True, kw_only=True):
    """The config ``name`` is gone: new runs cannot use it, running ones keep their version."""

    topic = "PipelineDeleted"

    name: str
    version: int
    """The last version defined before the delete."""
    reason: str = ""


def stream_version_of(version: int) -> int:
    """Where config version ``version`` sits in its stream."""
    return version - 1


def defined(event: RecordedEvent, name: str) -> Pipeline | None:
    """The definition a ``pipeline-<name>`` event holds, or None if it holds none.

    Only a ``PipelineDefined`` for ``name`` whose version matches its place in
    the stream counts; anything else (e.g. appended by hand through the streams
    API) is not a definition.
    """
    if event.type != PipelineDefined.topic:
        return None
    try:
        payload = registry.decode(event, PipelineDefined)
    except msgspec.ValidationError:
        return None
    if payload.name != name or stream_version_of(payload.version) != event.version:
        return None
    return payload.pipeline()


@dataclass(frozen=True)
class ConfigVersion:
    pipeline: Pipeline
    defined_at: datetime


@dataclass
class ConfigState:
    """A config as its stream tells it: every version, and whether it is deleted."""

    name: str
    stream_version: int = -1
    """The stream's last version (-1: no stream): the expected version of the next append."""
    position: int = 0
    """The log position of the stream's last event."""
    versions: dict[int, ConfigVersion] = field(default_factory=dict)
    latest: ConfigVersion | None = None
    deleted: bool = False

    @property
    def exists(self) -> bool:
        """Defined and not deleted since: new runs may use it."""
        return self.latest is not None and not self.deleted

    @property
    def next_version(self) -> int:
        """The version the next ``PipelineDefined`` will have."""
        return self.stream_version + 2


def fold_config(name: str, events: Sequence[RecordedEvent]) -> ConfigState:
    """Fold a ``pipeline-<name>`` stream, oldest first."""
    state = ConfigState(name)
    for event in events:
        state.stream_version, state.position = event.version, event.position
        pipeline = defined(event, name)
        if pipeline is not None:
            state.latest = ConfigVersion(pipeline, event.recorded_at)
            state.versions[pipeline.version] = state.latest
            state.deleted = False
        elif event.type == PipelineDeleted.topic:
            state.deleted = True
    return state
