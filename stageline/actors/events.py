"""Run lifecycle events: every state transition of a run, as an immutable fact.

A run lives in the stream ``run-<run id>``; the run id is taken from the
stream name, so it is not repeated in each payload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from stageline.events.envelope import DomainEvent

REPORTED_VERSION = 0
"""The ``pipeline_version`` of a run reported from outside (``Stageline.report``): no
pipeline has it, so stageline never drives the run."""

Index = Annotated[int, msgspec.Meta(ge=0)]
"""A stage's place in its pipeline."""
Attempt = Annotated[int, msgspec.Meta(ge=1)]
"""A stage's attempt: the first is 1."""
Duration = Annotated[float, msgspec.Meta(ge=0)]
"""Milliseconds an attempt took."""


class RunSubmitted(DomainEvent, frozen=True, kw_only=True):
    topic = "RunSubmitted"

    pipeline: str
    pipeline_version: Annotated[int, msgspec.Meta(ge=0)]
    stages: list[str]
    input: dict[str, Any]


class StageStarted(DomainEvent, frozen=True, kw_only=True):
    topic = "StageStarted"

    stage: str
    index: Index
    attempt: Attempt = 1


class StageCompleted(DomainEvent, frozen=True, kw_only=True):
    topic = "StageCompleted"

    stage: str
    index: Index
    attempt: Attempt = 1
    duration_ms: Duration = 0.0
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class StageFailed(DomainEvent, frozen=True, kw_only=True):
    """An attempt failed; ``will_retry`` says whether attempt + 1 comes at ``retry_at``."""

    topic = "StageFailed"

    stage: str
    index: Index
    attempt: Attempt = 1
    error_type: str
    error: str
    duration_ms: Duration = 0.0
    will_retry: bool = False
    retry_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    permanent: bool = False


class StageCompensated(DomainEvent, frozen=True, kw_only=True):
    """A stage's recorded effects were reversed by the compensating events that follow it."""

    topic = "StageCompensated"

    stage: str
    index: Index
    compensates: list[str]
    reason: str


class StageSkipped(DomainEvent, frozen=True, kw_only=True):
    """A stage gave up after its retries; the run goes on at ``next_stage`` (its fallback)."""

    topic = "StageSkipped"

    stage: str
    index: Index
    reason: str
    next_stage: str | None
    next_index: Index


class EffectCompensated(DomainEvent, frozen=True, kw_only=True):
    """The generic reversal of an effect whose stage defines no compensation of its own."""

    topic = "EffectCompensated"

    compensates: str
    effect_type: str


class RunCompleted(DomainEvent, frozen=True, kw_only=True):
    topic = "RunCompleted"

    output: dict[str, Any] = msgspec.field(default_factory=dict)


class RunFailed(DomainEvent, frozen=True, kw_only=True):
    topic = "RunFailed"

    stage: str
    error_type: str
    error: str
    dead_letter: str | None = None


class RunCancelled(DomainEvent, frozen=True, kw_only=True):
    """The run stops: its attempt in hand is interrupted (a stop notice), or its result,
    if one comes, discarded; no later stage starts."""

    topic = "RunCancelled"

    reason: str = ""


class RunCompensated(DomainEvent, frozen=True, kw_only=True):
    """Every stage's effects were reversed (undo); the original events stay in the log."""

    topic = "RunCompensated"

    stages: list[str]
    reason: str = "undo"


class RunRetried(DomainEvent, frozen=True, kw_only=True):
    """A failed run is driven again from ``stage``, with a fresh attempt."""

    topic = "RunRetried"

    stage: str
    index: Index
    attempt: Attempt


RUN_TERMINAL = frozenset(
    {RunCompleted.topic, RunFailed.topic, RunCancelled.topic, RunCompensated.topic}
)


class DeadLettered(DomainEvent, frozen=True, kw_only=True):
    """A command no worker could handle, kept with why and how often it was tried."""

    topic = "DeadLettered"

    dead_letter: str
    actor: str
    error: str
    deliveries: int
    run_id: str | None = None
    stage: str | None = None
    command: dict[str, Any] | None = None
    raw: str | None = None  # base64 of an entry that did not decode


class DeadLetterRedriven(DomainEvent, frozen=True, kw_only=True):
    topic = "DeadLetterRedriven"

    dead_letter: str


class DeadLetterDiscarded(DomainEvent, frozen=True, kw_only=True):
    topic = "DeadLetterDiscarded"

    dead_letter: str
    reason: str = ""
