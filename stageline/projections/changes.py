"""What one batch of log events does to a projection's rows: one change per key, plus a checkpoint.

Every projection's fold returns a ``Changes``: its own rows, the batch's last
position (the checkpoint to store with them), how many events the batch held
and which of them were rejected.

Changes compose: applying the changes of two consecutive batches one after
the other leaves a view equal to applying the fold of both batches at once.
``created`` applies only to a new row, ``fields`` are last-writer-wins (a
``None`` value removes the property), and the additive parts (stage
``attempts``, entity ``mentions``) add up. That is what makes a rebuild equal
the live view, wherever the batch boundaries fall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Changes",
    "DeadLetterChange",
    "EntityChange",
    "EntityChanges",
    "PipelineChange",
    "PipelineChanges",
    "RunChange",
    "RunStatusChanges",
    "StageChange",
]


@dataclass(slots=True)
class Changes:
    """The part of every projection's changes the projector reads: checkpoint and tallies."""

    position: int = 0
    """The last log position folded, relevant event or not: the checkpoint to store."""
    events: int = 0
    """How many log events the batch held, relevant or not."""
    rejected: list[int] = field(default_factory=list)
    """Positions of events of a known type whose payload could not be folded (skipped)."""

    @property
    def has_rows(self) -> bool:
        """Whether there is anything to write besides the checkpoint."""
        return False


@dataclass(slots=True)
class RunChange:
    """What one batch does to one run.

    ``created`` is applied only when the run's row does not exist yet (it is
    set by the batch holding ``RunSubmitted``); then ``fields`` overwrite
    whatever the row holds. When ``fields`` sets ``status`` on a run that
    already exists, the writer moves the run's count from its stored status.
    """

    run_id: str
    created: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    soft: bool = False
    """``fields["status"]`` applies only if the stored status is not an ending.

    Set when the batch moved the run between ``processing`` and ``retrying``
    without knowing where it stood before: a run that has ended stays ended
    until an event that reopens it (``RunRetried``), as the runtime sees it.
    """
    new: bool = False
    """The batch holds the first event of the run's stream (its ``RunSubmitted`` at
    version 0): no batch before wrote the run, so no ``None`` in ``fields`` has anything
    to remove."""


@dataclass(slots=True)
class StageChange:
    """What one batch does to one stage of a run, like ``RunChange``.

    ``attempts`` is added to the stored count of attempts, which starts at 0.
    """

    run_id: str
    name: str
    created: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    reopened: bool = False
    """The batch's first change of the stage's status may find it stored completed (an
    undo, a new attempt past the first, a retry or skip): the writer then takes its
    stored duration out of the stage durations. A first attempt's start, or a result
    (which follows its own start), finds it not completed: in the histories stageline's
    runtime writes (each start and result appended at the run's version) and that the
    rules of reported runs (``actors/reported.py``) let in."""

    def set_status(self, status: str, *, reopens: bool, **fields: Any) -> None:
        """Set the stage's status (and ``fields``); ``reopens`` if the event may follow a
        completion of the stage."""
        if "status" not in self.fields:
            self.reopened = reopens
        self.fields.update(status=status, **fields)

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.name}"


@dataclass(slots=True)
class DeadLetterChange:
    """What one batch does to one dead letter.

    ``created`` is applied only to a new entry, whose ``deliveries`` is then
    the stored ``attempts`` of the stage ``stage`` (run id, stage name; 0 if none) plus
    ``deliveries``: a run's dead letter counts its stage's attempts up to the
    failure, which the batch alone may not hold.
    """

    id: str
    created: dict[str, Any] | None = None
    stage: tuple[str, str] | None = None
    deliveries: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EntityChange:
    """How much one batch moves one entity's mention count (may be 0 or negative)."""

    key: str
    name: str
    type: str
    mentions: int = 0


@dataclass(slots=True)
class PipelineChange:
    """What one batch does to one pipeline config's row: last-writer-wins ``fields``."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RunStatusChanges(Changes):
    """The ``run_status`` projection's changes: runs, their stages and dead letters.

    Handlers get or start one change per key through ``run``, ``stage`` and
    ``dead_letter``. The run counts are the writer's: it moves them as the rows'
    statuses move (only a run's stored row knows where it stood before the batch).
    """

    runs: dict[str, RunChange] = field(default_factory=dict)
    stages: dict[tuple[str, str], StageChange] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetterChange] = field(default_factory=dict)

    @property
    def has_rows(self) -> bool:
        return bool(self.runs or self.stages or self.dead_letters)

    def run(self, run_id: str, at: int) -> RunChange:
        """The run's change, its ``updated_at`` moved to ``at``."""
        change = self.runs.get(run_id)
        if change is None:
            change = self.runs[run_id] = RunChange(run_id)
        change.fields["updated_at"] = at
        return change

    def stage(self, run_id: str, name: str, index: Any) -> StageChange:
        """The stage's change, its ``index`` set when the event names one."""
        change = self.stages.get((run_id, name))
        if change is None:
            change = self.stages[(run_id, name)] = StageChange(run_id, name)
        if index is not None:
            change.fields["index"] = index
        return change

    def dead_letter(self, dead_letter: str) -> DeadLetterChange:
        change = self.dead_letters.get(dead_letter)
        if change is None:
            change = self.dead_letters[dead_letter] = DeadLetterChange(dead_letter)
        return change


@dataclass(slots=True)
class EntityChanges(Changes):
    """The ``entities`` projection's changes: mention counts moved, per entity."""

    entities: dict[str, EntityChange] = field(default_factory=dict)

    @property
    def has_rows(self) -> bool:
        return bool(self.entities)

    def entity(self, entity_type: str, name: str) -> EntityChange:
        key = f"{entity_type}/{name}"
        change = self.entities.get(key)
        if change is None:
            change = self.entities[key] = EntityChange(key, name, entity_type)
        return change


@dataclass(slots=True)
class PipelineChanges(Changes):
    """The ``pipelines`` projection's changes: one row change per pipeline config."""

    pipelines: dict[str, PipelineChange] = field(default_factory=dict)

    @property
    def has_rows(self) -> bool:
        return bool(self.pipelines)

    def pipeline(self, name: str) -> PipelineChange:
        change = self.pipelines.get(name)
        if change is None:
            change = self.pipelines[name] = PipelineChange(name)
        return change
