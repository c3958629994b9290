"""The change semantics the FalkorDB writer implements, over plain dicts: the reference.

Fold tests apply changes here to check that batches compose; the adapter
tests check that FalkorDB agrees with the same expectations.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stageline.projections import Changes, EntityChanges, RunStatusChanges
from stageline.projections.run_status import RUN_ENDINGS


def empty() -> dict[str, Any]:
    return {"runs": {}, "stages": {}, "dead_letters": {}, "entities": {}, "counts": {}}


def apply(view: dict[str, Any], changes: Changes) -> None:
    """Apply one batch's changes of ``run_status`` or ``entities`` as their writers do."""
    if isinstance(changes, RunStatusChanges):
        _run_status(view, changes)
    else:
        assert isinstance(changes, EntityChanges)
        for e in changes.entities.values():
            row = view["entities"].setdefault(
                e.key, {"name": e.name, "type": e.type, "mentions": 0}
            )
            row["mentions"] += e.mentions
    view["position"] = changes.position


def _run_status(view: dict[str, Any], changes: RunStatusChanges) -> None:
    """In the writer's order: dead letters first, then runs."""
    runs, stages, counts = view["runs"], view["stages"], view["counts"]
    for d in changes.dead_letters.values():
        row = view["dead_letters"].get(d.id)
        if row is None:
            if d.created is None:
                continue  # closing an entry never seen
            stage = stages.get("/".join(d.stage)) if d.stage else None
            deliveries = (stage["attempts"] if stage else 0) + d.deliveries
            row = view["dead_letters"][d.id] = {**d.created, "deliveries": deliveries}
        row.update(d.fields)
    for run in changes.runs.values():
        row = runs.get(run.run_id)
        before = None if row is None else row["status"]  # a run it creates counts as a move
        if row is None:
            if run.created is None:
                continue  # an unknown run is never created by a later event
            row = runs[run.run_id] = dict(run.created)
        fields = dict(run.fields)
        if run.soft and row["status"] in RUN_ENDINGS:
            del fields["status"]
        row.update(fields)
        if row["status"] != before:
            if before is not None:
                counts[before] = counts.get(before, 0) - 1
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    for stage in changes.stages.values():
        if stage.run_id not in runs:
            continue
        row = stages.get(stage.key)
        if row is None:
            row = stages[stage.key] = {"attempts": 0, **(stage.created or {})}
        row.update(stage.fields)
        row["attempts"] += stage.attempts


def strip_nulls(view: dict[str, Any]) -> dict[str, Any]:
    """The view with null properties dropped: a property set to null does not exist."""

    def clean(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {k: {f: v for f, v in row.items() if v is not None} for k, row in rows.items()}

    counts = {s: n for s, n in view["counts"].items() if n}
    return {
        **view,
        **{k: clean(view[k]) for k in ("runs", "stages", "dead_letters")},
        "counts": counts,
    }


def counted(view: dict[str, Any]) -> dict[str, int]:
    """Runs by status as the rows say: what the counts must equal after every batch."""
    return dict(Counter(row["status"] for row in view["runs"].values()))
