"""Run lifecycle events: every state transition of a run, as an immutable fact.

A run lives in the stream ``run-<run id>``; the run id is taken from the
stream name, so it is not repeated in each payload.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stageline.events.envelope import DomainEvent


class RunSubmitted(DomainEvent, frozen=True, kw_only=True):
    topic = "RunSubmitted"

    pipeline: str
    pipeline_version: int
    stages: list[str]
    input: dict[str, Any]


class StageStarted(DomainEvent, frozen=True, kw_only=True):
    topic = "StageStarted"

    stage: str
    index: int
    attempt: int = 1


class StageCompleted(DomainEvent, frozen=True, kw_only=True):
    topic = "StageCompleted"

    stage: str
    index: int
    attempt: int = 1
    duration_ms: float = 0.0
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class StageFailed(DomainEvent, frozen=True, kw_only=True):
    topic = "StageFailed"

    stage: str
    index: int
    attempt: int = 1
    error_type: str
    error: str
    duration_ms: float = 0.0
    will_retry: bool = False


class RunCompleted(DomainEvent, frozen=True, kw_only=True):
    topic = "RunCompleted"

    output: dict[str, Any] = msgspec.field(default_factory=dict)


class RunFailed(DomainEvent, frozen=True, kw_only=True):
    topic = "RunFailed"

    stage: str
    error_type: str
    error: str


RUN_TERMINAL = frozenset({RunCompleted.topic, RunFailed.topic})
