"""Runs an imported log left unfinished, which the copy must not drive on its own.

A log exported while runs were in flight holds their ``StageStarted`` without a result.
Imported elsewhere, those attempts look lost (their times are the log's), and the
reconciler would run their stages again: a stage's side effects (a charge) twice. So
``stageline import`` holds each such run at the length it was imported with
(``EventStore.hold_streams``) before appending any of it, and the reconciler lets a
held run be while it has no event past those (part-way through the import too). A user may still end one (cancel, undo): an operation appends an
event, after which the run is as any other. ``import --resume`` holds none, and lets
go of an earlier import's holds of the log's runs (a workspace moved to a new server
goes on there).
"""

from __future__ import annotations

from stageline.actors.events import (
    REPORTED_VERSION,
    RUN_TERMINAL,
    RunRetried,
    RunSubmitted,
)
from stageline.events.envelope import RecordedEvent
from stageline.events.keys import RUN_STREAM_PREFIX

__all__ = ["UnfinishedRuns"]


class UnfinishedRuns:
    """Fed a log's events in log order (``see``), names the runs left unfinished at its
    end, as ``fold_run`` has them (a retried run is unfinished again), but for runs
    reported from outside, which stageline never drives."""

    def __init__(self) -> None:
        self._lengths: dict[str, int] = {}
        self._driven: set[str] = set()
        self._open: set[str] = set()

    def see(self, event: RecordedEvent) -> None:
        stream = event.stream
        if not stream.startswith(RUN_STREAM_PREFIX):
            return
        self._lengths[stream] = event.version + 1
        if event.type == RunSubmitted.topic:
            data = event.data if isinstance(event.data, dict) else {}
            if data.get("pipeline_version", 1) != REPORTED_VERSION:
                self._driven.add(stream)
                self._open.add(stream)
        elif event.type == RunRetried.topic and stream in self._driven:
            self._open.add(stream)
        elif event.type in RUN_TERMINAL:
            self._open.discard(stream)

    def lengths(self) -> dict[str, int]:
        """Each unfinished run's stream, with how many events the log has of it."""
        return {stream: self._lengths[stream] for stream in self._open}
