"""Importing an exported log: checked whole before anything is written, then appended as it
was, into either store."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from test_store_contract import ItemPacked, ParcelWeighed, ev

from stageline.actors.events import RunSubmitted, StageFailed
from stageline.errors import Conflict, InvalidArgument
from stageline.events import NO_STREAM, AppendResult, EventStore, NewEvent, RecordedEvent
from stageline.events import new_event as typed_event
from stageline.events.envelope import EventRegistry
from stageline.events.log_import import CheckedLog, check_log, import_log
from stageline.events.logfile import iter_lines, read_lines
from stageline.events.memory_store import MemoryEventStore
from stageline.events.redis_store import RedisEventStore
from stageline.events.store import MAX_EVENTS_PER_APPEND, AppendRequest

T0 = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[EventStore]:
    store: EventStore
    store = MemoryEventStore() if request.param == "memory" else RedisEventStore.from_url(redis_url)
    yield store
    await store.close()


class Recording(MemoryEventStore):
    """A memory store noting the requests of every ``append_batch``."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[AppendRequest]] = []

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        self.batches.append(list(requests))
        return await super().append_batch(requests)


async def export(store: EventStore, workspace: str) -> list[bytes]:
    """The workspace log as JSON lines, each event as ``GET /v1/log`` encodes it."""
    out: list[bytes] = []
    after = 0
    while page := await store.read_log(workspace, after=after):
        out.extend(msgspec.json.encode(e) for e in page)
        after = page[-1].position
    return out


TYPES = EventRegistry()
"""The event types these logs' readers know, with how to read the old schema of one."""
for _known in (ItemPacked, ParcelWeighed, RunSubmitted, StageFailed):
    TYPES.register(_known)


@TYPES.upcaster(ParcelWeighed.topic, 1)
def _kg_to_grams(data: dict[str, Any]) -> dict[str, Any]:
    return {"grams": round(data["kg"] * 1000), "scale": "unknown"}


def checked(lines: Sequence[bytes | str], source: str = "log.jsonl") -> CheckedLog:
    return check_log(read_lines(lines, source=source, exact=True), source=source, types=TYPES)


def again(e: RecordedEvent, **changes: Any) -> NewEvent:
    """A recorded event as a new one, to append it again (changed)."""
    fields = ("type", "data", "event_id", "schema_version", "occurred_at")
    fields += ("correlation_id", "causation_id")
    return NewEvent(**{**{f: getattr(e, f) for f in fields}, **changes})


async def history(store: EventStore, workspace: str) -> list[RecordedEvent]:
    """A log of three interleaved streams written at a few times: a typed payload (a time
    and a uuid in it), an old schema, typed ones written as plain JSON (one without its
    defaults), plain events.

    Log order: order-1 v0 v1, parcel-1 v0, order-1 v2, parcel-1 v1 v2 v3, order-2 v0,
    order-1 v3.
    """
    packed = ItemPacked(
        sku="SKU-ü1", quantity=3, packed_at=datetime(2025, 5, 1, 8, 30, 0, 1, tzinfo=UTC),
        parcel=uuid.uuid4(), tags=("a",),
    )  # fmt: skip
    as_json = {
        "sku": "S2", "quantity": 1, "packed_at": "2025-05-01T08:30:00Z", "parcel": str(uuid.uuid4()),
    }  # fmt: skip
    plan = [
        AppendRequest(workspace, "order-1", [ev(0), ev(1)], NO_STREAM, recorded_at=T0),
        AppendRequest(workspace, "parcel-1", [typed_event(packed, correlation_id="c1")],
                      NO_STREAM, recorded_at=T0),
        AppendRequest(workspace, "order-1", [ev(2, text="日本語 🚀", f=0.1)], 1,
                      recorded_at=T0 + timedelta(milliseconds=1)),
        AppendRequest(workspace, "parcel-1", [
            NewEvent(type=ParcelWeighed.topic, schema_version=1, data={"kg": 1.25}),
            NewEvent(type=ItemPacked.topic, data=as_json, causation_id="k"),
            NewEvent(type=ParcelWeighed.topic, schema_version=2, data={"grams": 5, "scale": "s"}),
        ], 0, recorded_at=T0 + timedelta(seconds=3)),
        AppendRequest(workspace, "order-2", [ev(3)], NO_STREAM),  # the store's clock
        AppendRequest(workspace, "order-1", [ev(4)], 2),
    ]  # fmt: skip
    results = await store.append_batch(plan)
    assert not [r for r in results if isinstance(r, Exception)], results
    return await store.read_log(workspace)


def elsewhere(events: Sequence[RecordedEvent], workspace: str) -> list[RecordedEvent]:
    return [msgspec.structs.replace(e, workspace=workspace) for e in events]


async def test_a_log_imported_into_an_empty_workspace_is_the_same_log(
    store: EventStore, workspace: str
) -> None:
    source = await history(store, f"{workspace}src")
    lines = await export(store, f"{workspace}src")
    progress: list[tuple[int, int]] = []

    result = await import_log(
        store, checked(lines), workspace, progress=lambda *a: progress.append(a), batch_events=2
    )

    assert (result.workspace, result.imported, result.present, result.streams) == (
        workspace, 9, 0, 3,
    )  # fmt: skip
    assert result.positions_kept
    # every field as it was but the workspace; a time in typed data is a time again
    got = await store.read_log(workspace)
    assert got == elsewhere(source, workspace)
    assert isinstance(got[2].data["packed_at"], datetime)
    assert got[5].data["packed_at"] == "2025-05-01T08:30:00Z"  # written as text: kept so
    # told after each batch of about 2 events
    assert progress == [(2, 9), (4, 9), (7, 9), (9, 9)]


async def test_importing_again_writes_nothing_and_finishes_a_part_way_import(
    store: EventStore, workspace: str
) -> None:
    source = await history(store, f"{workspace}src")
    lines = await export(store, f"{workspace}src")

    first = await import_log(store, checked(lines[:4]), workspace)
    assert (first.imported, first.present) == (4, 0)
    rest = await import_log(store, checked(lines), workspace)
    assert (rest.imported, rest.present, rest.positions_kept) == (5, 4, True)
    done = await import_log(store, checked(lines), workspace)
    assert (done.imported, done.present, done.positions_kept) == (0, 9, True)

    assert await store.read_log(workspace) == elsewhere(source, workspace)


async def test_a_workspace_with_other_events_takes_the_log_after_them(
    store: EventStore, workspace: str
) -> None:
    source = await history(store, f"{workspace}src")
    await store.append(workspace, "unrelated", [ev(9)])
    # the workspace has more of a stream than the log (its one event, then another), and
    # that event recorded at another time, and made at another (the ontology reactor
    # records the same decision, with the same id, when it reacts to what an import
    # appended): it is there already all the same
    later = source[7].occurred_at + timedelta(minutes=5)
    await store.append(
        workspace, "order-2", [again(source[7], occurred_at=later), ev(10)], NO_STREAM
    )

    result = await import_log(store, checked(await export(store, f"{workspace}src")), workspace)

    assert (result.imported, result.present, result.positions_kept) == (8, 1, False)
    log = await store.read_log(workspace)
    assert [(e.stream, e.event_id) for e in log[3:]] == [
        (e.stream, e.event_id) for e in source if e.stream != "order-2"
    ]
    assert [e.recorded_at for e in log[3:]] == [
        e.recorded_at for e in source if e.stream != "order-2"
    ]
    assert [e.position for e in log] == list(range(1, 12))


@pytest.mark.parametrize("held", ["another event", "the same with other data"])
async def test_a_stream_holding_other_events_is_a_conflict_and_nothing_is_written(
    store: EventStore, workspace: str, held: str
) -> None:
    source = await history(store, f"{workspace}src")
    lines = await export(store, f"{workspace}src")
    other = ev(7) if held == "another event" else again(source[4], data={"kg": 9})
    await store.append(workspace, "parcel-1", [again(source[2]), other], NO_STREAM)
    before = await store.read_log(workspace)

    with pytest.raises(Conflict) as info:
        await import_log(store, checked(lines), workspace)

    message = info.value.message
    assert f"stream 'parcel-1' of workspace '{workspace}' holds other events" in message
    assert "at version 1" in message and "log.jsonl" in message and "(line 5)" in message
    if held == "another event":
        assert f"it has event {other.event_id}" in message
    else:
        assert "it has that event with other content" in message
    assert await store.read_log(workspace) == before  # not even the streams before it


async def test_a_stream_written_while_importing_stops_the_import(workspace: str) -> None:
    lines = [msgspec.json.encode(e) for e in await history(MemoryEventStore(), workspace)]

    class Late(MemoryEventStore):
        """A store another writer appends to between the import's read and its appends."""

        async def read_log(self, *args: Any, **kwargs: Any) -> list[RecordedEvent]:
            return []

    late = Late()
    await late.append(workspace, "order-2", [ev(99)])
    with pytest.raises(Conflict, match=r"'order-2' .* changed while importing .* 8 of 9"):
        await import_log(late, checked(lines), workspace)


async def test_appends_keep_to_one_stream_one_time_and_what_one_append_takes(
    workspace: str,
) -> None:
    later = T0 + timedelta(seconds=1)
    rows = [
        _line(v, recorded_at=(T0 if v < 3 else later).isoformat())
        for v in range(MAX_EVENTS_PER_APPEND + 4)
    ]
    rows.append(_line(len(rows), stream="t", version=0, recorded_at=later.isoformat()))
    store = Recording()

    await import_log(store, checked([json.dumps(r) for r in rows]), workspace)

    [batch] = store.batches
    assert [(r.stream, len(r.events), r.expected_version, r.recorded_at) for r in batch] == [
        ("s", 3, NO_STREAM, T0),
        ("s", MAX_EVENTS_PER_APPEND, 2, later),
        ("s", 1, MAX_EVENTS_PER_APPEND + 2, later),
        ("t", 1, NO_STREAM, later),
    ]


# -- a log that cannot be imported ----------------------------------------------------


def _line(n: int, stream: str = "s", version: int | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=n + 1)), "type": "A", "schema_version": 1,
        "stream": stream, "version": n if version is None else version, "position": n + 1,
        "workspace": "w", "occurred_at": "2025-06-01T12:00:00Z",
        "recorded_at": "2025-06-01T12:00:00.250Z", "correlation_id": None,
        "causation_id": None, "data": {"n": n}, **fields,
    }  # fmt: skip


def _log(*changes: Callable[[list[dict[str, Any]]], object]) -> list[str]:
    rows = [_line(0), _line(1), _line(2)]
    for change in changes:
        change(rows)
    return [json.dumps(r) for r in rows]


def _set(i: int, **fields: Any) -> Callable[[list[dict[str, Any]]], object]:
    return lambda rows: rows[i].update(fields)


def _drop(i: int, field: str) -> Callable[[list[dict[str, Any]]], object]:
    return lambda rows: rows[i].pop(field)


BAD_LOGS: dict[str, tuple[list[str], int, str]] = {
    "not JSON": ([*_log()[:2], '{"event_id": '], 3, "not an event (Input data was truncated)"),
    "a field missing": (_log(_drop(1, "stream")), 2, "not an event (Object missing required field `stream`"),
    "a field too many": (_log(_set(2, metadata={})), 3, "not an event (Object contains unknown field `metadata`"),
    "a wrong type": (_log(_set(0, version="0")), 1, "not an event (Expected `int`, got `str`"),
    "another workspace": (_log(_set(2, workspace="v")), 3, "an event of workspace 'v' in a log of 'w'"),
    "a bad stream name": (_log(_set(1, stream="a b", version=0)), 2, "stream name must be"),
    "no type": (_log(_set(1, type="")), 2, "an event needs a type"),
    "schema version 0": (_log(_set(1, schema_version=0)), 2, "schema_version 0"),
    "a version gap": (_log(_set(2, version=3)), 3, "version 3 of stream 's', expected 2"),
    "no version 0": (_log(_set(0, stream="t")), 2, "version 1 of stream 's', expected 0"),
    "positions back": (_log(_set(2, position=2)), 3, "position 2 after 2 (line 2)"),
    "position 0": (_log(_set(0, position=0)), 1, "position 0: positions start at 1"),
    "an id twice": (_log(_set(2, event_id=str(uuid.UUID(int=1)))), 3, f"event {uuid.UUID(int=1)} is in stream 's' already (line 1)"),
    "a naive time": (_log(_set(1, occurred_at="2025-06-01T12:00:00")), 2, "occurred_at 2025-06-01T12:00:00 has no timezone"),
    "a finer time": (_log(_set(1, recorded_at="2025-06-01T12:00:00.2501Z")), 2, "recorded_at 2025-06-01T12:00:00.250100+00:00 is finer than a millisecond"),
    "a newer schema": (_log(_set(1, type=ParcelWeighed.topic, schema_version=3)), 2, "contract-test.ParcelWeighed schema_version 3 is newer"),
    "data no store holds": (_log(_set(1, data={"n": 2**64})), 2, "event cannot be encoded"),
    "data its schema refuses": (_log(_set(1, type="RunSubmitted", data={"pipeline": 5})), 2, "RunSubmitted: Expected `str`, got `int` - at `$.pipeline`"),
    "a field of the wrong type": (_log(_set(2, type="StageFailed", data={"stage": "a", "index": 0, "attempt": "xx", "error_type": "E", "error": ""})), 3, "StageFailed: Expected `int`, got `str` - at `$.attempt`"),
    "a field its schema has not": (_log(_set(1, type=ParcelWeighed.topic, schema_version=2, data={"grams": 1, "scale": "s", "kg": 1})), 2, "contract-test.ParcelWeighed: no field 'kg' in schema_version 2"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_LOGS))
def test_a_log_that_cannot_be_imported_is_refused_naming_the_line(name: str) -> None:
    lines, line, error = BAD_LOGS[name]
    with pytest.raises(InvalidArgument) as info:
        checked(lines, source="bad.jsonl")
    assert str(info.value).startswith(f"bad.jsonl, line {line}: {error}")


def test_a_log_that_can_be_imported() -> None:
    log = checked(["", *_log(_set(2, stream="t", version=0)), "  "])  # blank lines count
    assert (log.workspace, log.events) == ("w", 3)
    assert {s: list(kept.lines) for s, kept in log.streams.items()} == {"s": [2, 3], "t": [4]}
    assert (checked([]).workspace, checked([]).events) == (None, 0)


async def test_a_log_changed_after_its_check_stops_the_import_naming_the_line(
    workspace: str,
) -> None:
    rows = [_line(n, recorded_at=f"2025-06-01T12:00:0{n}.250Z") for n in range(4)]
    first = read_lines([json.dumps(r) for r in rows], source="log.jsonl", exact=True)
    rows[2]["event_id"] = str(uuid.uuid4())  # another event by the second reading
    second = read_lines([json.dumps(r) for r in rows], source="log.jsonl", exact=True)
    readings = iter([first, second])
    log = check_log(lambda: next(readings), source="log.jsonl")
    store = MemoryEventStore()

    with pytest.raises(InvalidArgument) as info:
        await import_log(store, log, workspace, batch_events=1)

    assert info.value.message == (
        "log.jsonl, line 3: not as when it was checked: it changed while importing; "
        "1 of 4 events were imported: import it again"
    )
    assert [e.version for e in await store.read_log(workspace)] == [0]  # what was sent


def test_a_line_that_is_not_an_event_is_named_before_an_earlier_wrong_one() -> None:
    lines = _log(_set(1, version=5))
    lines.append('{"event_id": ')
    with pytest.raises(InvalidArgument, match=r"^log, line 4: not an event"):
        check_log(lambda: read_lines_lazily(lines))


def read_lines_lazily(lines: Sequence[str]) -> Iterator[tuple[int, RecordedEvent]]:
    yield from iter_lines(lines)
