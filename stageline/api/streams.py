"""``/v1/streams``: other systems append their own events to a stream, and read streams back."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import Response

from stageline.api.appends import expected_version as expected_version_of
from stageline.api.appends import idempotent_event_id, new_events
from stageline.api.deps import CorrelationId, IdempotencyKey, StackDep, Workspace
from stageline.api.responses import Backwards, FromVersion, PageLimit, json_response, stream_page
from stageline.api.routing import Router
from stageline.api.schemas import Appended, AppendEvents, StreamEvents, error_responses
from stageline.errors import Conflict, InvalidArgument
from stageline.events.envelope import NewEvent
from stageline.events.keys import (
    IDEMPOTENCY_TTL_SECONDS,
    check_outside_stream,
    check_stream,
    idempotency_key,
)
from stageline.events.redis_store import RedisEventStore
from stageline.events.store import AppendRequest, AppendResult, EventStore
from stageline.stack import Stack

__all__ = ["idempotent_event_id", "router"]

router = Router(prefix="/v1/streams", tags=["streams"])

log = structlog.get_logger("stageline.api")


def _key_reused(stream: str) -> Conflict:
    return Conflict("Idempotency-Key was already used for a different request", stream=stream)


def request_digest(stream: str, body: AppendEvents) -> bytes:
    """What identifies an append request: its stream, expected version and events as sent."""
    request = {"stream": stream, **body.model_dump(mode="json")}
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest().encode()


async def _claim_key(stack: Stack, workspace: str, stream: str, key: str, digest: bytes) -> None:
    """Bind ``key`` to the request of ``digest``, unless it is bound already: ``Conflict``
    if to another. The claims of concurrent requests share one round trip.

    Whatever ids the events carry, the key names one request; a retry of it goes on
    to an append the store deduplicates.
    """
    claim = (idempotency_key(workspace, key), digest, IDEMPOTENCY_TTL_SECONDS)
    held = await stack.claims.call(claim)
    if isinstance(held, Exception):
        raise held
    if held is not None and held != digest:
        raise _key_reused(stream)


async def _release_key(
    store: RedisEventStore,
    workspace: str,
    stream: str,
    key: str,
    digest: bytes,
    events: Sequence[NewEvent],
) -> None:
    """Unbind ``key`` from the request of ``digest`` if it appended nothing, so the request
    can be sent again corrected (another expected version, say) with the same key.

    ``events`` are the request's events the stream must not hold, as it would if their
    append landed though its answer was lost; none for an append the store refused."""
    try:
        await store.release(
            idempotency_key(workspace, key), digest, workspace, stream, [e.event_id for e in events]
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:  # the key stays: same request only
        log.warning("api.idempotency_key_kept", error=f"{type(exc).__name__}: {exc}")


async def _had_more_events(
    store: EventStore, workspace: str, stream: str, key: str, count: int, result: AppendResult
) -> bool:
    """Whether the request with ``key`` that stored the ``count`` events of a fully
    deduplicated append (its key since expired) had more of them than this one."""
    # the stored request's events are consecutive: one more past the last is its next
    [*after] = await store.read_stream(
        workspace, stream, from_version=max(result.versions) + 1, limit=1
    )
    return bool(after) and after[0].event_id == idempotent_event_id(workspace, stream, key, count)


async def _append(stack: Stack, request: AppendRequest) -> AppendResult:
    """``request`` appended from outside, with those of concurrent requests (one
    ``outside.append_batch``); raises what the store or the run's rules refuse."""
    result = await stack.outside_appends.call(request)
    if isinstance(result, Exception):
        raise result
    return result


@router.post(
    "/{stream}/events",
    status_code=201,
    response_model=None,
    responses={201: {"model": Appended}, **error_responses(400, 409, 413, 503)},
)
async def append_events(
    stream: str,
    body: AppendEvents,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Append 1-1000 events to `stream` atomically, all or none.

    `expected_version` guards against concurrent writers: a clash is a 409 whose
    `details.actual_version` is the stream's version. Events of a type stageline
    knows are checked against its schema (400, nothing written) and stored as that
    schema has them, like the events stageline writes: a time as a time (in UTC),
    defaults filled in, fields it lacks left out. Other events' data is stored as
    sent. A request all of whose events the stream holds (by `event_id`), as they
    were sent (`occurred_at` and `correlation_id` aside, which are filled in when
    left out), is a retry: it writes nothing and answers `deduplicated` with where
    they are. One whose `event_id` the stream holds for another event, or holding
    some of its events but not all, is a 409 naming the event id, and writes
    nothing. An `Idempotency-Key` names one request of the workspace for 24 hours:
    a retry of it writes nothing new and gets the same answer, another request
    with the key (other stream, events or expected version) is a 409 that writes
    nothing. A request that appended nothing (a version clash, a 409 or 400 from
    the store, the store down) leaves its key free for the request corrected.
    Events without an `event_id` get ids derived from the key. Streams stageline
    writes itself (`ontology`, `dead-letters`, `pipeline-*`) are a 400 naming the
    route to use.
    """
    check_outside_stream(stream)
    now = datetime.now(UTC)
    events = new_events(
        body,
        event_id=lambda i: (
            idempotent_event_id(workspace, stream, idempotency_key, i)
            if idempotency_key is not None
            else uuid.uuid4()
        ),
        correlation_id=correlation_id,
        now=now,
    )
    expected_version = expected_version_of(body)
    # whole: all new events or a repeat of stored ones, never another event under a stored id
    request = AppendRequest(workspace, stream, events, expected_version, whole=True)
    if idempotency_key is None:
        result = await _append(stack, request)
    else:
        digest = request_digest(stream, body)
        await _claim_key(stack, workspace, stream, idempotency_key, digest)
        try:
            result = await _append(stack, request)
            if result.deduplicated and await _had_more_events(
                stack.store, workspace, stream, idempotency_key, len(events), result
            ):
                raise _key_reused(stream)
        except (Conflict, InvalidArgument):  # refused, nothing appended: it may be sent corrected
            await _release_key(stack.store, workspace, stream, idempotency_key, digest, ())
            raise
        except Exception:  # the store down, ...: unless the append landed, it may be resent
            await _release_key(stack.store, workspace, stream, idempotency_key, digest, events)
            raise
    return json_response(
        {
            "stream": result.stream,
            "version": result.version,
            "versions": result.versions,
            "positions": result.positions,
            "deduplicated": result.deduplicated,
        },
        201,
    )


@router.get(
    "/{stream}/events",
    response_model=None,
    responses={200: {"model": StreamEvents}, **error_responses(400, 404, 503)},
)
async def stream_events(
    stream: str,
    stack: StackDep,
    workspace: Workspace,
    from_version: FromVersion = None,
    limit: PageLimit = 100,
    backwards: Backwards = False,
) -> Response:
    """A page of `stream`'s events in version order (404 if the stream does not exist)."""
    check_stream(stream)
    return await stream_page(
        stack.store,
        workspace,
        stream,
        from_version=from_version,
        limit=limit,
        backwards=backwards,
    )
