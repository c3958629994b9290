"""The same workload written with the ``eventsourcing`` library, the way its docs teach it.

A ``Run`` aggregate records the 12 events of a run of the 5-stage pipeline. The
run-status view is a ``Projection`` over a tracking recorder (the library's
projection runner); in the live system (``es_live``), where SQLite offers no
subscriptions, each stage is a ``ProcessApplication`` and the view a process
application folding every transition into a ``RunView`` aggregate.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import ApplicationRecorder, Tracking
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from bench.data import PIPELINE, STAGES, item


class Run(Aggregate):
    @event("Submitted")
    def __init__(
        self, pipeline: str, pipeline_version: int, stages: list[str], input: dict[str, Any]
    ) -> None:
        self.pipeline = pipeline
        self.stages = stages
        self.input = input
        self.status = "processing"

    @event("StageStarted")
    def start_stage(self, stage: str, index: int, attempt: int) -> None:
        self.current = stage

    @event("StageCompleted")
    def complete_stage(
        self, stage: str, index: int, attempt: int, duration_ms: float, output: dict[str, Any]
    ) -> None:
        self.current = stage

    @event("Completed")
    def complete(self, output: dict[str, Any]) -> None:
        self.status = "completed"


def completed_run(i: int) -> Run:
    """A run with its 12 events pending (not saved yet)."""
    run = Run(PIPELINE.name, PIPELINE.version, list(STAGES), item(i))
    for index, stage in enumerate(STAGES):
        run.start_stage(stage, index, 1)
        run.complete_stage(stage, index, 1, 0.004, {})
    run.complete({})
    return run


class Runs(Application[uuid.UUID]):
    """The writer application."""

    name = "Runs"


class SharedRuns(Runs):
    """``Runs`` over one in-memory recorder shared by every instance in this process, so a
    projection runner (which builds its own application) reads the log written before it."""

    recorder_instance: ClassVar[ApplicationRecorder | None] = None

    def construct_recorder(self) -> ApplicationRecorder:
        cls = type(self)
        if cls.recorder_instance is None:
            cls.recorder_instance = super().construct_recorder()
        return cls.recorder_instance


def shared_runs_class() -> type[SharedRuns]:
    """A ``SharedRuns`` subclass with a log of its own (one per log the bench builds)."""
    return type("SharedRuns", (SharedRuns,), {"recorder_instance": None})


class RunStatusView(POPOTrackingRecorder):
    """Run status in memory: per run its status, current stage and stages; counts by status."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[uuid.UUID, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()

    def change(
        self,
        run_id: uuid.UUID,
        tracking: Tracking,
        *,
        run: dict[str, Any] | None = None,
        stage: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Apply one event's changes and its tracking record atomically."""
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            row = self.runs.get(run_id)
            if row is None:
                row = self.runs[run_id] = {"stages": {}, "status": None}
            if run:
                before = row["status"]
                row.update(run)
                if row["status"] != before:
                    if before is not None:
                        self.counts[before] -= 1
                    self.counts[row["status"]] += 1
            if stage:
                name, fields = stage
                row["stages"].setdefault(name, {}).update(fields)
            self._insert_tracking(tracking)


class RunStatusProjection(Projection[RunStatusView]):
    name = "runstatus"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register
    def _(self, e: Run.Submitted, tracking: Tracking) -> None:  # type: ignore[name-defined]
        at = e.timestamp
        self.view.change(
            e.originator_id,
            tracking,
            run={
                "pipeline": e.pipeline,
                "status": "processing",
                "submitted_at": at,
                "updated_at": at,
                "stages": {n: {"index": i, "status": "pending"} for i, n in enumerate(e.stages)},
            },
        )

    @process_event.register
    def _(self, e: Run.StageStarted, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self.view.change(
            e.originator_id,
            tracking,
            run={"current_stage": e.stage, "updated_at": e.timestamp},
            stage=(e.stage, {"status": "active", "started_at": e.timestamp}),
        )

    @process_event.register
    def _(self, e: Run.StageCompleted, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self.view.change(
            e.originator_id,
            tracking,
            run={"updated_at": e.timestamp},
            stage=(
                e.stage,
                {"status": "completed", "ended_at": e.timestamp, "duration_ms": e.duration_ms},
            ),
        )

    @process_event.register
    def _(self, e: Run.Completed, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self.view.change(
            e.originator_id,
            tracking,
            run={"status": "completed", "completed_at": e.timestamp, "updated_at": e.timestamp},
        )


def save_runs(app: Application[Any], runs: Sequence[Run]) -> float:
    """Save each run (one call per run); the seconds it took."""
    started = time.perf_counter()
    for run in runs:
        app.save(run)
    return time.perf_counter() - started
