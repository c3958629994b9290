"""A log replayed offline into the run-status view, as of any position.

Pure: it folds with the same ``run_status`` fold the projector writes the view
with, and shows each run as the view's reads do (``rows.run_with_stages``), so what
it shows is what ``GET /v1/runs/{id}`` would have answered once the view had
reached that position.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stageline.events import RecordedEvent
from stageline.projections import run_status
from stageline.projections.rows import run_with_stages

__all__ = ["Replayed", "runs_as_of"]


@dataclass(frozen=True, slots=True)
class Replayed:
    runs: list[dict[str, Any]]
    """Each run whose stream the log holds from its first event, oldest submission first,
    as ``GET /v1/runs/{id}`` shows it."""
    partial: list[str]
    """The ids of the runs the log holds only part of (their stream's first event in it is
    not its first: a log exported ``--after`` a position), in the order they first appear.
    They are not among ``runs``: the view shows no run without its ``RunSubmitted``, and
    what the rest of a run folds to would pass for a run it never was."""


def runs_as_of(events: Iterable[RecordedEvent], until: int | None = None) -> Replayed:
    """Each run as the run-status view held it once it had applied position ``until`` (every
    event when None), and the runs the log holds only part of.

    ``events`` come in log order, as ``stageline tail`` exports them; they are folded as
    they come, so a log of any length takes the memory of its runs' rows alone, and
    reading stops at the first event past ``until``.
    """
    changes = run_status.fold(events if until is None else _through(events, until))
    stages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (run_id, name), stage in changes.stages.items():
        row = {"name": name, **(stage.created or {}), **stage.fields, "attempts": stage.attempts}
        stages[run_id].append(row)
    runs = []
    for run_id, run in changes.runs.items():
        if run.created is None:  # no RunSubmitted: the run began before the log, or is none
            continue
        row = {"id": run_id, **run.created, **run.fields}
        runs.append(run_with_stages(row, stages.get(run_id, ())))
    # a run without its RunSubmitted began before the log's first event
    partial = [run_id for run_id, run in changes.runs.items() if run.created is None]
    return Replayed(sorted(runs, key=lambda r: r["seq"] or 0), partial)


def _through(events: Iterable[RecordedEvent], until: int) -> Iterator[RecordedEvent]:
    """``events`` up to position ``until``, taking none past the one there."""
    for event in events:
        if event.position > until:
            return
        yield event
        if event.position == until:
            return
