"""Request and response models of the HTTP API: what callers send and get back.

Requests are validated by these models. Responses on the read paths are encoded
straight from the store's and the views' data with msgspec; their models here
describe them for the OpenAPI document at ``/docs`` without re-validating big lists.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from stageline.projections.run_status import RunStatus, StageStatus

EVENT_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,99}$"
MAX_EVENTS = 1000

Label = Annotated[str, Field(min_length=1, max_length=200)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- runs ------------------------------------------------------------------------------


class RunInput(_Request):
    """The item a pipeline works on. Unknown fields are rejected."""

    text: str = Field(description="The memory item's text; non-empty, at most `max_text_chars`.")
    id: Label | None = Field(default=None, description="The caller's id for the item.")
    source: Label | None = Field(default=None, description="Where the item came from.")
    metadata: dict[str, Any] | None = Field(default=None, description="Free-form, kept as given.")
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the item happened (ISO 8601 with a time zone)."
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must not be empty or only whitespace")
        return text


class SubmitRun(_Request):
    pipeline: str = Field(min_length=1, max_length=100, examples=["memory-ingest"])
    input: RunInput


class StageView(BaseModel):
    name: str
    index: int | None
    status: StageStatus
    attempts: int | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: float | None
    metadata: dict[str, Any] | None
    error: str | None


class RunView(BaseModel):
    """A run as the run-status view holds it."""

    id: str
    pipeline: str
    pipeline_version: int
    status: RunStatus
    current_stage: str | None
    submitted_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    error: str | None
    seq: int = Field(description="Log position of the run's RunSubmitted; orders the list.")
    stages: list[StageView] = Field(default_factory=list, description="In pipeline order.")


class SubmitAccepted(BaseModel):
    """Where the submitted run lives; `position` is the log position to read it at."""

    run_id: str
    stream: str
    position: int
    deduplicated: bool = Field(description="True when the Idempotency-Key had been used before.")
    status_url: str
    run: RunView | None = Field(
        default=None, description="Only with `wait`: the run as far as it got in time."
    )


class RunSummary(BaseModel):
    id: str
    pipeline: str
    pipeline_version: int
    status: RunStatus
    current_stage: str | None
    submitted_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    error: str | None
    seq: int


class RunList(BaseModel):
    runs: list[RunSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class StageTimings(BaseModel):
    count: int = Field(description="Completed attempts of the stage.")
    p50_ms: float
    p95_ms: float


class RunStats(BaseModel):
    counts: dict[str, int] = Field(description="Runs by status.")
    total: int
    stages: dict[str, StageTimings] = Field(description="By stage name.")


# -- events ------------------------------------------------------------------------------


class EventIn(_Request):
    """An event to append. Known types (`stageline.events.registry`) have their data checked."""

    type: str = Field(pattern=EVENT_TYPE_PATTERN, examples=["OrderPlaced"])
    data: dict[str, Any]
    event_id: uuid.UUID | None = Field(
        default=None,
        description="Makes a retried append idempotent. Generated when absent "
        "(derived from Idempotency-Key when that header is given).",
    )
    schema_version: Annotated[StrictInt, Field(ge=1)] = 1
    occurred_at: AwareDatetime | None = None
    correlation_id: Label | None = Field(
        default=None, description="Defaults to the request's X-Correlation-ID."
    )
    causation_id: Label | None = None


class AppendEvents(_Request):
    expected_version: Annotated[StrictInt, Field(ge=0)] | Literal["any", "no_stream"] = Field(
        default="any",
        description='The stream\'s current last version, "no_stream" (it must not exist) or "any".',
    )
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)

    @field_validator("expected_version", mode="wrap")
    @classmethod
    def _one_error(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int | str:
        # one clear error instead of one per member of the union
        try:
            result: int | str = handler(value)
        except ValidationError:
            raise ValueError(
                'expected_version must be an integer >= 0, "any" or "no_stream"'
            ) from None
        return result


class Appended(BaseModel):
    stream: str
    version: int = Field(description="The stream's last version after the append.")
    versions: list[int] = Field(description="Each event's version, in request order.")
    positions: list[int] = Field(description="Each event's log position, in request order.")
    deduplicated: bool = Field(description="True when every event had been appended before.")


class EventOut(BaseModel):
    event_id: uuid.UUID
    type: str
    schema_version: int
    stream: str
    version: int
    position: int
    workspace: str
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]


class StreamEvents(BaseModel):
    stream: str
    version: int = Field(description="The stream's last version.")
    events: list[EventOut]
    next_from_version: int | None = Field(
        description="Pass as `from_version` for the next page; null when there is none."
    )


class LogPage(BaseModel):
    events: list[EventOut] = Field(description="Oldest first.")
    next_after: int = Field(description="Pass as `after` for the next page.")
    head: int = Field(description="Position of the workspace's newest event.")


# -- health and errors ----------------------------------------------------------------------


class Alive(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    ms: float
    error: str | None = None


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Check]


class ErrorBody(BaseModel):
    code: str = Field(examples=["NOT_FOUND"])
    message: str
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    """The shape of every error answer."""

    error: ErrorBody
    correlation_id: str | None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring the error envelope for ``statuses``."""
    return {status: {"model": ErrorEnvelope} for status in statuses}
