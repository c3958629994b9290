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
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from stageline.api.limits import MAX_JSON_DEPTH, MAX_POSITION, nests_within
from stageline.events.envelope import EVENT_TYPE_PATTERN
from stageline.projections.run_status import RunStatus, StageStatus

MAX_EVENTS = 1000

Label = Annotated[str, Field(min_length=1, max_length=200)]


def _shallow(value: dict[str, Any]) -> dict[str, Any]:
    if not nests_within(value):
        raise ValueError(f"objects and arrays may nest at most {MAX_JSON_DEPTH} levels deep")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_shallow)]
"""A free-form JSON object, kept as given, nested at most ``MAX_JSON_DEPTH`` levels deep."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- runs ------------------------------------------------------------------------------


class FlakyOptions(_Request):
    """How the `flaky` pipeline's deliberately failing stage behaves for one run."""

    fail_times: Annotated[StrictInt, Field(ge=0, le=1000)] | None = Field(
        default=None, description="Fail every attempt numbered up to this one (default 1)."
    )
    permanent: bool | None = Field(default=None, description="Fail with a permanent error.")
    sleep_seconds: float | None = Field(
        default=None, ge=0, le=60, description="Sleep this long in every attempt."
    )
    effect: bool | None = Field(
        default=None, description="Record a compensable effect per attempt (default true)."
    )


class RunInput(_Request):
    """The item a pipeline works on. Unknown fields are rejected."""

    text: str = Field(description="The memory item's text; non-empty, at most `max_text_chars`.")
    id: Label | None = Field(default=None, description="The caller's id for the item.")
    source: Label | None = Field(default=None, description="Where the item came from.")
    metadata: JsonObject | None = Field(default=None, description="Free-form, kept as given.")
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the item happened (ISO 8601 with a time zone)."
    )
    flaky: FlakyOptions | None = Field(
        default=None, description="Only read by the `flaky` pipeline, to exercise retries."
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
    retry_at: datetime | None = Field(description="While `retrying`: when the next attempt is due.")


class RunSummary(BaseModel):
    """A run as the run-status view holds it, without its stages."""

    id: str
    pipeline: str
    pipeline_version: int
    status: RunStatus
    current_stage: str | None
    submitted_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    ended_at: datetime | None = Field(description="When the run ended, however it ended.")
    error: str | None
    dead_letter: str | None = Field(
        description="While `failed`: the dead letter its failure opened."
    )
    reason: str | None = Field(description="Why it was cancelled or compensated.")
    seq: int


class RunView(RunSummary):
    """A run as the run-status view holds it."""

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


class RunList(BaseModel):
    runs: list[RunSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class StageTimings(BaseModel):
    count: int = Field(description="Runs whose stage stands completed.")
    p50_ms: float = Field(
        description="Median duration of those, in ms: within 2% of the duration + 1 ms."
    )
    p95_ms: float = Field(description="95th percentile, as `p50_ms`.")


class RunStats(BaseModel):
    counts: dict[str, int] = Field(description="Runs by status.")
    total: int
    stages: dict[str, StageTimings] = Field(description="By stage name.")


# -- run operations -----------------------------------------------------------------


class CancelRun(_Request):
    reason: str = Field(default="", max_length=500, description="Recorded on `RunCancelled`.")


class RunOperation(BaseModel):
    """The outcome of an undo, retry or cancel; `position` is the log position to read it at."""

    run_id: str
    status: RunStatus = Field(description="The run's status once the operation is applied.")
    position: int
    changed: bool = Field(
        description="False when the run already was in that state and nothing was written."
    )
    note: str | None = Field(
        default=None,
        description="A cancelled run reported from outside: stageline cannot stop its reporter.",
    )


# -- dead letters ------------------------------------------------------------------------


class DeadLetterView(BaseModel):
    """A command or a run that gave up, as the dead-letter view holds it."""

    id: str
    kind: Literal["run", "poison"] = Field(
        description="`run`: a run whose stage gave up; `poison`: a command no worker could handle."
    )
    stream: str = Field(description="The stream holding the entry's events.")
    actor: str | None
    stage: str | None
    run_id: str | None
    error: str | None
    deliveries: int | None
    status: Literal["open", "redriven", "discarded"]
    created_at: datetime | None
    closed_at: datetime | None
    reason: str | None = Field(description="Why it was discarded, when it was.")
    raw: str | None = Field(
        description="A poison entry that did not decode (e.g. the ingest channel's): the raw "
        "entry, as `raw_encoding` says; null for a run or a decoded command."
    )
    raw_encoding: Literal["utf-8", "base64"] | None = Field(
        description="`utf-8`: `raw` is the entry's text; `base64`: the entry was not UTF-8."
    )


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterView] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class DeadLetterClosed(BaseModel):
    """A dead letter redriven or discarded; `position` is the log position to read it at."""

    dead_letter: str
    kind: Literal["run", "poison"]
    run_id: str | None
    status: Literal["redriven", "discarded"]
    position: int


# -- entities ----------------------------------------------------------------------------


class EntityView(BaseModel):
    key: str = Field(description="`<type>/<name>`.")
    name: str
    type: str
    mentions: int = Field(description="Mentions recorded minus mentions retracted (e.g. by undo).")


class EntityList(BaseModel):
    entities: list[EntityView] = Field(
        description="Most mentioned first, then by name, then by type; none without a "
        "standing mention."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end. Opaque: pass it as it is."
    )


# -- pipelines ---------------------------------------------------------------------------


class RetryPolicyIn(_Request):
    """What happens when an attempt of the stage fails."""

    max_retries: StrictInt = Field(default=0, description="Attempts after the first; >= 0.")
    backoff_seconds: float = Field(
        default=1.0, description="Delay before the first retry, in seconds; >= 0."
    )
    backoff_multiplier: float = Field(
        default=2.0, description="Each later delay is this many times the one before; >= 1."
    )
    max_backoff_seconds: float | None = Field(
        default=None, description="Caps every delay; null: no cap."
    )
    fallback: str | None = Field(
        default=None,
        description='Once retries are spent: null (the run fails, a dead letter), "skip" '
        "(go on with the next stage) or the name of a later stage to go on at.",
    )


class StageIn(_Request):
    name: str = Field(
        description="Unique within the pipeline; 1-64 of a-z, 0-9, '_', '-'.", examples=["enrich"]
    )
    actor: str = Field(description="A registered actor, e.g. `normalize` or `flaky`.")
    params: JsonObject = Field(default_factory=dict, description="Handed to the actor.")
    timeout_seconds: float = Field(default=30.0, description="Per attempt; > 0.")
    retry: RetryPolicyIn = Field(default_factory=RetryPolicyIn)


class _PipelineBody(_Request):
    description: str = Field(default="", max_length=2000)
    stages: list[StageIn] = Field(description="In order; 1-100 stages.")


class PipelineCreate(_PipelineBody):
    """A new pipeline config of the workspace."""

    name: str = Field(
        description="1-64 of a-z, 0-9, '_', '-', starting with a letter or digit; "
        "not a built-in's name.",
        examples=["enrich-and-summarize"],
    )


class PipelineUpdate(_PipelineBody):
    """The next version of a pipeline config: its whole definition."""

    name: str | None = Field(default=None, description="If given, must be the name in the path.")


class StageOut(BaseModel):
    name: str
    actor: str
    params: dict[str, Any]
    timeout_seconds: float
    retry: dict[str, Any]


class PipelineView(BaseModel):
    """One version of a pipeline: its whole definition."""

    name: str
    version: int
    description: str
    builtin: bool = Field(description="Built-ins are in every workspace and read-only.")
    stages: list[StageOut]
    defined_at: datetime | None = Field(description="When this version was recorded.")
    latest_version: int = Field(description="The config's newest version.")
    deleted: bool = Field(description="The config was deleted; its versions stay readable.")


class PipelineSummary(BaseModel):
    name: str
    version: int = Field(description="The latest version: the one a new run uses.")
    description: str
    builtin: bool
    stages: list[str] = Field(description="Stage names, in order.")
    updated_at: datetime | None


class PipelineList(BaseModel):
    pipelines: list[PipelineSummary] = Field(description="Built-ins first, then by name.")


class PipelineWritten(BaseModel):
    """A config created, changed or deleted; `position` is the log position to read it at."""

    name: str
    version: int = Field(description="The version written (for a delete: the last one).")
    position: int
    changed: bool = Field(description="False when the definition was already this one.")


# -- ontology ----------------------------------------------------------------------------

PatternSourceName = Literal["seed", "discovered", "promoted", "manual"]
TypeStatusName = Literal["seed", "provisional", "confirmed", "rejected"]


class PatternCreate(_Request):
    """A pattern added by hand (source `manual`), or an override of an existing one."""

    name: StrictStr = Field(
        description="The surface text matched (any case): 1-100 characters, no control "
        "characters or surrounding spaces.",
        examples=["Redis"],
    )
    entity_type: StrictStr = Field(
        description="1-64 of a-z, 0-9, '_', '-', starting with a letter. A type the ontology "
        "lacks (or rejected) is added as `confirmed`.",
        examples=["technology"],
    )
    confidence: StrictFloat = Field(default=1.0, description="From 0 to 1.")
    is_global: StrictBool = Field(
        default=False,
        description="Write it to the global patterns, which every workspace matches.",
    )


class PatternView(BaseModel):
    """A pattern with its match statistics, as the pattern-stats view holds it."""

    id: str = Field(description="Derived from the name (any case) and the type.")
    name: str
    entity_type: str
    source: PatternSourceName
    confidence: float
    is_global: bool = Field(description="A global pattern (listed in every workspace).")
    active: bool = Field(description="False once removed (listed with `include_removed`).")
    removed_reason: str | None
    matches: int = Field(description="Mentions matched in this workspace, net of retractions.")
    runs_matched: int = Field(description="Runs that matched it, net of retractions.")
    first_seen: datetime | None
    last_seen: datetime | None


class SourceCounts(BaseModel):
    """Active patterns by source."""

    seed: int
    discovered: int
    promoted: int
    manual: int


class PatternList(BaseModel):
    patterns: list[PatternView] = Field(
        description="The workspace's patterns and the global ones (a workspace pattern "
        "overrides a global one with its id); most matched first, then by name, then by id."
    )
    stats_by_source: SourceCounts = Field(
        description="The workspace's own active patterns by source."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end. Opaque: pass it as it is."
    )


class PatternWritten(BaseModel):
    """A pattern added or removed; `position` is the position to read it at in `workspace`'s log."""

    pattern_id: str
    workspace: str = Field(
        description="Where it was written: the request's workspace, or `_global` for a "
        "global pattern (then pass `position` as `min_global_position`)."
    )
    position: int


class TypeCounts(BaseModel):
    """Entity types by status."""

    seed: int
    provisional: int
    confirmed: int
    rejected: int


class OntologyTotals(BaseModel):
    patterns: int
    types: int
    runs: int = Field(description="Runs that ended (completed or failed).")
    mentions: int = Field(description="Pattern mentions matched, net of retractions.")
    mentions_established: int = Field(
        description="Of those, by established (seed, manual or promoted) patterns."
    )
    patterns_discovered: int
    types_proposed: int


class OntologyRates(BaseModel):
    """Shares from 0 to 1; null when there is nothing to divide by."""

    promotion_rate: float | None = Field(
        description="Promoted / (discovered + promoted) active patterns."
    )
    confirmation_rate: float | None = Field(description="Confirmed / non-seed types.")
    rejection_rate: float | None = Field(description="Rejected / non-seed types.")
    resolved_by_confirmed: float | None = Field(
        description="Share of mentions matched by established patterns."
    )


class DiscoveryBucket(BaseModel):
    runs_from: int
    runs_to: int
    patterns: int = Field(description="Patterns discovered while these runs went through.")
    types: int = Field(description="Types proposed while these runs went through.")
    per_100_runs: float = Field(description="Patterns and types discovered per 100 runs.")


class OntologyStatus(BaseModel):
    pattern_stats: SourceCounts
    type_counts: TypeCounts
    totals: OntologyTotals
    rates: OntologyRates
    discovery_curve: list[DiscoveryBucket] = Field(
        description="Discoveries per bucket of `bucket_runs` runs, from the first run on: "
        "it flattens as the ontology converges."
    )


class DocumentTypeOut(BaseModel):
    name: str
    status: TypeStatusName = "provisional"


class DocumentPatternOut(BaseModel):
    name: str
    entity_type: str
    confidence: float = 0.9
    source: PatternSourceName = "manual"


class OntologyDocument(BaseModel):
    """An ontology as a versioned document: every type, then every active pattern of the
    workspace (global patterns are not part of it). Unknown fields are rejected."""

    format: Literal["stageline.ontology"]
    version: Literal[1]
    types: list[DocumentTypeOut] = Field(default_factory=list)
    patterns: list[DocumentPatternOut] = Field(
        default_factory=list, description="Each naming a type of the document, not rejected."
    )


class OntologyImported(BaseModel):
    """The document replaced the workspace's ontology; `position` is the position to read it at."""

    workspace: str
    position: int


# -- events ------------------------------------------------------------------------------


class EventIn(_Request):
    """An event to append. Known types (`stageline.events.registry`) have their data checked."""

    type: str = Field(pattern=EVENT_TYPE_PATTERN, examples=["OrderPlaced"])
    data: JsonObject
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
    expected_version: (
        Annotated[StrictInt, Field(ge=0, le=MAX_POSITION)] | Literal["any", "no_stream"]
    ) = Field(
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


class IngestMessage(AppendEvents):
    """An entry of the ingest channel: ``POST /v1/streams/{stream}/events``'s body, plus
    the stream and, unless it is the worker's default, the workspace."""

    stream: str
    workspace: str | None = None


class Appended(BaseModel):
    stream: str
    version: int = Field(description="The stream's last version after the append.")
    versions: list[int] = Field(description="Each event's version, in request order.")
    positions: list[int] = Field(description="Each event's log position, in request order.")
    deduplicated: bool = Field(
        description="True when the stream held every event already (a retry: nothing was "
        "appended); a request is never part new, part held."
    )


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


# -- projections ---------------------------------------------------------------------------


class RebuildView(BaseModel):
    """A rebuild started by this API process, as far as it got."""

    projection: str | None = None
    status: Literal["running", "finished", "failed"]
    started_at: datetime
    finished_at: datetime | None = None
    position: int = Field(description="The last log position replayed into the view.")
    head: int | None = Field(description="The log's head when the replay started.")
    events: int | None = Field(description="Events this rebuild replayed, once finished.")
    error: str | None = None


class ProjectionStatus(BaseModel):
    name: str
    checkpoint: int = Field(description="The last log position applied to the view.")
    lag: int = Field(description="Events of the log not yet in the view.")
    rebuild: RebuildView | None = Field(
        description="The last rebuild this API process started for it, if any."
    )


class ProjectionList(BaseModel):
    workspace: str
    head: int = Field(description="The log's newest position.")
    projections: list[ProjectionStatus]


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
