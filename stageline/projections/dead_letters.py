"""The dead-letter view as a pure fold: one row per dead letter, open until closed.

Part of the ``run_status`` projection (``run_status.FOLD``), written with it.

Two kinds of entry: ``run`` (a run whose stage gave up with no fallback; its
``RunFailed`` carries the dead letter's id and lives in the run's stream) and
``poison`` (a command no worker could handle: ``DeadLettered`` on the
``dead-letters`` stream; one appended to any other stream opens nothing, as it
could be neither redriven nor discarded). ``DeadLetterRedriven`` and
``DeadLetterDiscarded`` close an entry by id, whichever stream they were appended to.

A poison entry that did not decode (the ingest channel's, or a stage command's)
keeps its raw entry: ``raw`` holds it as text when it is UTF-8 (``raw_encoding``
``utf-8``), else as base64 (``base64``); both are null for a decoded command.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Any

from stageline.actors.events import DeadLetterDiscarded, DeadLettered, DeadLetterRedriven
from stageline.events import RecordedEvent
from stageline.events.keys import DEAD_LETTERS_STREAM
from stageline.projections.batch import Handler
from stageline.projections.changes import RunStatusChanges

__all__ = [
    "DEAD_LETTER_CREATED",
    "DEAD_LETTER_FIELDS",
    "HANDLERS",
    "DeadLetterKind",
    "DeadLetterStatus",
    "open_for_run",
]

# Every key a change may carry: view adapters write exactly these properties
# (and ``deliveries``, computed from the change's ``stage`` and ``deliveries``).
# ``seq`` is the log position of the event that opened the entry: it orders the list.
DEAD_LETTER_CREATED = (
    "kind", "stream", "actor", "stage", "run_id", "error", "created_at", "seq",
    "raw", "raw_encoding",
)  # fmt: skip
DEAD_LETTER_FIELDS = ("status", "closed_at", "reason")


class DeadLetterKind(StrEnum):
    RUN = "run"
    POISON = "poison"


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REDRIVEN = "redriven"
    DISCARDED = "discarded"


DeadLetterHandler = Handler[RunStatusChanges]
"""``(changes, stream, event time in ms, event, upcast payload)``."""


def open_for_run(
    b: RunStatusChanges,
    run_id: str,
    stream: str,
    stage: str,
    error: str,
    dead_letter: str,
    at: int,
    position: int,
) -> None:
    """Open the dead letter a ``RunFailed`` names; it counts the stage's attempts so far."""
    change = b.dead_letter(dead_letter)
    if change.created is not None:
        return
    change.created = {
        "kind": DeadLetterKind.RUN,
        "stream": stream,
        "actor": None,
        "stage": stage,
        "run_id": run_id,
        "error": error,
        "created_at": at,
        "seq": position,
        "raw": None,
        "raw_encoding": None,
    }
    started = b.stages.get((run_id, stage))
    change.stage = (run_id, stage)
    change.deliveries = started.attempts if started is not None else 0
    change.fields.setdefault("status", DeadLetterStatus.OPEN)


def _dead_lettered(
    b: RunStatusChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    if stream != DEAD_LETTERS_STREAM:
        return
    created = {
        "kind": DeadLetterKind.POISON,
        "stream": stream,
        "actor": d["actor"],
        "stage": d.get("stage"),
        "run_id": d.get("run_id"),
        "error": d["error"],
        "created_at": at,
        "seq": e.position,
        **_raw(d.get("raw")),
    }
    deliveries = int(d["deliveries"])
    change = b.dead_letter(d["dead_letter"])
    if change.created is not None:
        return
    change.created, change.deliveries = created, deliveries
    change.fields.setdefault("status", DeadLetterStatus.OPEN)


def _raw(encoded: Any) -> dict[str, str | None]:
    """The raw entry (base64 in the event) as text when it is UTF-8, else as base64."""
    if encoded is None:
        return {"raw": None, "raw_encoding": None}
    try:
        return {"raw": base64.b64decode(encoded, validate=True).decode(), "raw_encoding": "utf-8"}
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        return {"raw": str(encoded), "raw_encoding": "base64"}


def _closed(status: DeadLetterStatus) -> DeadLetterHandler:
    def close(
        b: RunStatusChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]
    ) -> None:
        dead_letter, reason = d["dead_letter"], d.get("reason") or None
        b.dead_letter(dead_letter).fields.update(status=status, closed_at=at, reason=reason)

    return close


HANDLERS: dict[str, DeadLetterHandler] = {
    DeadLettered.topic: _dead_lettered,
    DeadLetterRedriven.topic: _closed(DeadLetterStatus.REDRIVEN),
    DeadLetterDiscarded.topic: _closed(DeadLetterStatus.DISCARDED),
}
"""Dead-letter event type (on any stream) -> how it changes the view."""
