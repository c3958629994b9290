"""The ``EventStore`` contract, run against every adapter.

``StoreContract`` holds the tests; each adapter subclasses it once and provides
two fixtures: ``store`` (the store under test) and ``peers`` (20 stores writing
to the same data: the same object in memory, separate client connections for
Redis). The Redis store runs against the real embedded server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import msgspec
import pytest

from stageline.errors import (
    ConcurrencyError,
    EventIdReused,
    InvalidArgument,
    InvalidEvent,
    PartialRetry,
    StagelineError,
)
from stageline.events import (
    ANY,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    DomainEvent,
    EventRegistry,
    EventStore,
    NewEvent,
    RecordedEvent,
    codec,
    keys,
    new_event,
    registry,
)
from stageline.events.memory_store import MemoryEventStore
from stageline.events.redis_store import RedisEventStore, connect, same_server
from stageline.events.store import MAX_EVENTS_PER_APPEND, Outbox

PEERS = 20


def ev(n: int = 0, type: str = "ItemAdded", **data: Any) -> NewEvent:
    return NewEvent(type=type, data={"n": n, **data})


def nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... {}}}``, ``depth`` maps deep."""
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["a"] = inner = {}
    return top


def evs(count: int, start: int = 0) -> list[NewEvent]:
    return [ev(start + i) for i in range(count)]


async def log_ids(store: EventStore, workspace: str) -> list[uuid.UUID]:
    """Every event id in the workspace log, paging through it."""
    out: list[uuid.UUID] = []
    after = 0
    while page := await store.read_log(workspace, after=after, limit=1000):
        out.extend(e.event_id for e in page)
        after = page[-1].position
    return out


async def snapshot(store: EventStore, workspace: str, stream: str) -> tuple[Any, ...]:
    """What an append that must write nothing must leave unchanged."""
    return (
        await store.head(workspace),
        await store.stream_version(workspace, stream),
        [e.event_id for e in await store.read_stream(workspace, stream)],
        await log_ids(store, workspace),
    )


def outcome(result: AppendResult | Exception) -> Any:
    """An append's outcome, comparable across workspaces and stores."""
    if isinstance(result, StagelineError):
        return (type(result).__name__, result.message, result.details)
    return result


async def mixed_appends(
    store: EventStore, workspace: str, *, batched: bool
) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Appends of every kind to three streams of ``workspace`` and two of a second
    workspace, after a little history, as one ``append_batch`` or one ``append`` at a
    time: each request's ``outcome``, and both logs. Fresh events every call, the
    same data and plan."""
    other = f"{workspace}-2"
    known, known_other, fresh = evs(2, start=-2), ev(-3), evs(20, start=100)
    unreadable = NewEvent(type="x", data={1: "int key"})
    await store.append(workspace, "s1", known, NO_STREAM)
    await store.append(other, "s1", [known_other], NO_STREAM)
    requests = [
        AppendRequest(workspace, "s1", fresh[0:2], 1),
        AppendRequest(workspace, "s2", [fresh[2]], NO_STREAM),
        AppendRequest(workspace, "s1", [fresh[3]], 1),  # clash: at 3 now
        AppendRequest(workspace, "s1", known, 0),  # a retry that landed before
        AppendRequest(other, "s1", [known_other], NO_STREAM),  # the same, elsewhere
        AppendRequest(workspace, "s1", [known[1], fresh[4]], 3),  # half a retry
        AppendRequest(workspace, "bad name", [fresh[5]]),
        AppendRequest(other, "s2", fresh[6:9], NO_STREAM),
        AppendRequest(workspace, "s2", [fresh[9]], 0),  # on top of the batch's own append
        AppendRequest(workspace, "s2", [fresh[2]], NO_STREAM),  # a retry of that one
        AppendRequest(workspace, "s3", [fresh[10], fresh[10]]),
        AppendRequest(workspace, "s3", []),
        AppendRequest(workspace, "s2", [fresh[18], unreadable, fresh[19]], 1),
        AppendRequest(workspace, "s2", [fresh[11]], 7),  # clash: at 1
        AppendRequest("bad workspace", "s1", [fresh[12]]),
        AppendRequest(workspace, "s3", fresh[13:16], ANY),
        AppendRequest(other, "s1", [fresh[16]], 0),
        AppendRequest(workspace, "s1", [fresh[17]], NO_STREAM),  # clash: at 4
    ]
    if batched:
        results = await store.append_batch(requests)
    else:
        results = []
        for r in requests:
            try:
                results.append(
                    await store.append(r.workspace, r.stream, r.events, r.expected_version)
                )
            except StagelineError as exc:
                results.append(exc)
    logs = [
        (ws == other, e.stream, e.version, e.position, e.data["n"])
        for ws in (workspace, other)
        for e in await store.read_log(ws)
    ]
    return [outcome(r) for r in results], logs


class ItemPacked(DomainEvent, frozen=True, kw_only=True):
    topic: ClassVar[str] = "contract-test.ItemPacked"

    sku: str
    quantity: int
    tags: tuple[str, ...] = ()
    packed_at: datetime
    parcel: uuid.UUID
    note: str | None = None


class ParcelWeighed(DomainEvent, frozen=True, kw_only=True):
    """Schema v2: v1 had ``kg: float``, v2 has whole ``grams`` and a ``scale``."""

    topic: ClassVar[str] = "contract-test.ParcelWeighed"
    schema_version: ClassVar[int] = 2

    grams: int
    scale: str


class ParcelScanned(DomainEvent, frozen=True, kw_only=True):
    topic: ClassVar[str] = "contract-test.ParcelScanned"

    parcel: str
    kg: float


class StoreContract:
    """Abstract: collected only through the per-adapter subclasses below."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        raise NotImplementedError
        yield

    @pytest.fixture
    async def peers(self, store: EventStore) -> AsyncIterator[list[EventStore]]:
        raise NotImplementedError
        yield

    # -- append -----------------------------------------------------------------

    async def test_append_to_new_stream_with_no_stream(
        self, store: EventStore, workspace: str
    ) -> None:
        result = await store.append(workspace, "order-1", evs(3), NO_STREAM)

        assert result == AppendResult(
            stream="order-1", version=2, versions=[0, 1, 2], positions=[1, 2, 3], deduplicated=False
        )
        assert result.position == 3
        assert await store.stream_version(workspace, "order-1") == 2
        assert await store.head(workspace) == 3

    async def test_append_with_any_creates_and_extends(
        self, store: EventStore, workspace: str
    ) -> None:
        first = await store.append(workspace, "s", evs(2), ANY)
        second = await store.append(workspace, "s", evs(1, start=2))  # ANY is the default

        assert (first.versions, first.positions) == ([0, 1], [1, 2])
        assert (second.versions, second.positions, second.version) == ([2], [3], 2)

    async def test_append_with_exact_expected_version(
        self, store: EventStore, workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(2), NO_STREAM)
        result = await store.append(workspace, "s", evs(2, start=2), 1)

        assert result.versions == [2, 3]
        assert result.positions == [3, 4]
        assert result.version == 3
        assert [e.data["n"] for e in await store.read_stream(workspace, "s")] == [0, 1, 2, 3]

    async def test_versions_per_stream_positions_contiguous_per_workspace(
        self, store: EventStore, workspace: str
    ) -> None:
        plan = ["a", "b", "a", "c", "b", "a"]
        for i, stream in enumerate(plan):
            await store.append(workspace, stream, [ev(i)])

        log = await store.read_log(workspace)
        assert [e.position for e in log] == [1, 2, 3, 4, 5, 6]
        assert [(e.stream, e.version) for e in log] == [
            ("a", 0), ("b", 0), ("a", 1), ("c", 0), ("b", 1), ("a", 2),
        ]  # fmt: skip
        assert [e.position for e in await store.read_stream(workspace, "a")] == [1, 3, 6]

    @pytest.mark.parametrize("expected", [NO_STREAM, 0, 2, 7])
    async def test_version_clash_raises_with_actual_and_appends_nothing(
        self, store: EventStore, workspace: str, expected: int
    ) -> None:
        await store.append(workspace, "s", evs(2), NO_STREAM)  # stream at version 1
        await store.append(workspace, "other", evs(1))
        before = await snapshot(store, workspace, "s")
        rejected = evs(2, start=10)

        with pytest.raises(ConcurrencyError) as info:
            await store.append(workspace, "s", rejected, expected)

        assert (info.value.stream, info.value.expected, info.value.actual) == ("s", expected, 1)
        assert info.value.code == "CONFLICT"
        assert await snapshot(store, workspace, "s") == before
        # the rejected ids were not remembered either: appending them now is fresh
        retry = await store.append(workspace, "s", rejected, 1)
        assert (retry.versions, retry.deduplicated) == ([2, 3], False)

    async def test_exact_version_on_missing_stream_clashes_with_minus_one(
        self, store: EventStore, workspace: str
    ) -> None:
        with pytest.raises(ConcurrencyError) as info:
            await store.append(workspace, "s", [ev()], 0)
        assert info.value.actual == -1
        assert await store.head(workspace) == 0

    # -- idempotency ------------------------------------------------------------

    async def test_retry_returns_original_places_and_appends_nothing(
        self, store: EventStore, workspace: str
    ) -> None:
        await store.append(workspace, "s", [ev(-1)])
        batch = evs(2)
        original = await store.append(workspace, "s", batch, 0)
        await store.append(workspace, "s", evs(2, start=5), 2)  # stream moves on to 4
        before = await snapshot(store, workspace, "s")

        for expected in (0, NO_STREAM, ANY, 4):  # stale, wrong, any, current
            again = await store.append(workspace, "s", batch, expected)
            assert again.deduplicated is True
            assert again.versions == original.versions == [1, 2]
            assert again.positions == original.positions == [2, 3]
            # the version of its own events: appending on from the head instead
            # could skip over another writer's events
            assert again.version == 2
        assert await snapshot(store, workspace, "s") == before

    async def test_retry_mixing_known_and_new_events(
        self, store: EventStore, workspace: str
    ) -> None:
        known, fresh = ev(0), ev(1)
        await store.append(workspace, "s", [known], NO_STREAM)
        await store.append(workspace, "t", [ev(9)])

        with pytest.raises(ConcurrencyError):  # a new event still needs the right version
            await store.append(workspace, "s", [fresh, known], NO_STREAM)
        result = await store.append(workspace, "s", [fresh, known], 0)

        assert result.versions == [1, 0]
        assert result.positions == [3, 1]
        assert result.position == 3
        assert result.deduplicated is False
        assert [e.event_id for e in await store.read_stream(workspace, "s")] == [
            known.event_id,
            fresh.event_id,
        ]

    async def test_a_whole_append_repeats_all_of_one_or_none(
        self, store: EventStore, workspace: str
    ) -> None:
        first = evs(2)
        await store.append(workspace, "s", first, NO_STREAM, whole=True)
        await store.append(workspace, "t", [ev(9)])
        before = await snapshot(store, workspace, "s")

        for longer, index in (([*first, ev(5)], 0), ([ev(6), first[1]], 1)):
            with pytest.raises(PartialRetry) as refused:  # before the version check
                await store.append(workspace, "s", longer, NO_STREAM, whole=True)
            assert refused.value.actual == 1
            held = {"index": index, "event_id": str(first[index].event_id), "version": index}
            assert refused.value.details == {"stream": "s", "actual": 1, **held}
        [result] = await store.append_batch(
            [AppendRequest(workspace, "s", [first[0], ev(7)], whole=True)]
        )
        assert isinstance(result, PartialRetry)
        assert await snapshot(store, workspace, "s") == before

        again = await store.append(workspace, "s", first, 0, whole=True)
        assert again.deduplicated is True
        assert again.versions == [0, 1]
        shorter = await store.append(workspace, "s", first[:1], whole=True)
        assert shorter.versions == [0]  # all of it is held: the caller compares what it sent
        fresh = await store.append(workspace, "s", evs(2, start=10), 1, whole=True)
        assert fresh.versions == [2, 3]
        assert fresh.deduplicated is False

    async def test_a_whole_append_refuses_another_event_under_a_held_id(
        self, store: EventStore, workspace: str
    ) -> None:
        placed = NewEvent(type="OrderPlaced", data={"total": 10}, causation_id="c")
        note = NewEvent(type="OrderNote", data={"n": 1})
        await store.append(workspace, "s", [placed, note])
        before = await snapshot(store, workspace, "s")

        def like(event: NewEvent, **changes: Any) -> NewEvent:
            return msgspec.structs.replace(event, **changes)

        cancelled = like(placed, type="OrderCancelled", data={"reason": "fraud"})
        for sent, index, differs in [
            ([cancelled], 0, ["type", "data"]),
            ([cancelled, ev(9)], 0, ["type", "data"]),  # some new: not a partial retry either
            ([like(placed, schema_version=2)], 0, ["schema_version"]),
            ([like(placed, causation_id=None)], 0, ["causation_id"]),
            ([placed, like(note, data={"n": 2})], 1, ["data"]),
        ]:
            with pytest.raises(EventIdReused) as refused:
                await store.append(workspace, "s", sent, whole=True)
            assert refused.value.details == {
                "stream": "s",
                "index": index,
                "event_id": str(sent[index].event_id),
                "version": index,
                "differs": differs,
            }
        # when it happened and its correlation are filled in when not sent: a retry
        retry = like(placed, occurred_at=datetime.now(UTC), correlation_id="another request")
        results = await store.append_batch(
            [
                AppendRequest(workspace, "s", [like(placed, data={"total": 11})], whole=True),
                AppendRequest(workspace, "s", [retry, note], whole=True),
                AppendRequest(workspace, "s", [retry], whole=True),
            ]
        )
        assert isinstance(results[0], EventIdReused)
        assert results[1:] == [
            AppendResult("s", version=1, versions=[0, 1], positions=[1, 2], deduplicated=True),
            AppendResult("s", version=0, versions=[0], positions=[1], deduplicated=True),
        ]
        # not whole (a stage's or an import's retry): what the stream holds is dropped unseen
        dropped = await store.append(workspace, "s", [like(placed, type="OrderCancelled")])
        assert dropped.deduplicated is True
        assert await snapshot(store, workspace, "s") == before

    async def test_same_event_id_twice_in_one_append_is_rejected(
        self, store: EventStore, workspace: str
    ) -> None:
        event = ev()
        with pytest.raises(InvalidArgument, match="repeated"):
            await store.append(workspace, "s", [event, ev(1), event])
        assert await snapshot(store, workspace, "s") == (0, -1, [], [])

    # -- rejected appends -------------------------------------------------------

    async def test_empty_append_is_rejected(self, store: EventStore, workspace: str) -> None:
        with pytest.raises(InvalidArgument, match="at least one"):
            await store.append(workspace, "s", [])
        assert await store.head(workspace) == 0

    @pytest.mark.parametrize(
        "bad", ["", "-lead", ".lead", "has space", "br{ace}", "sl/ash", "x" * 65, "é", "nl\n"]
    )
    async def test_bad_workspace_is_rejected(self, store: EventStore, bad: str) -> None:
        known = await store.workspaces()
        with pytest.raises(InvalidArgument) as info:
            await store.append(bad, "s", [ev()])
        assert info.value.code == "INVALID_ARGUMENT"
        assert info.value.details == {"workspace": bad}
        assert await store.workspaces() == known

    @pytest.mark.parametrize(
        "bad", ["", ":lead", "has space", "br{ace}", "sl/ash", "x" * 201, "run-1\n"]
    )
    async def test_bad_stream_is_rejected(
        self, store: EventStore, workspace: str, bad: str
    ) -> None:
        with pytest.raises(InvalidArgument) as info:
            await store.append(workspace, bad, [ev()])
        assert info.value.details == {"stream": bad}
        assert await store.head(workspace) == 0
        assert workspace not in await store.workspaces()

    async def test_longest_names_are_accepted(self, store: EventStore) -> None:
        workspace, stream = "w" + uuid.uuid4().hex + "x" * 31, "s" + "x:@=+-._" * 24 + "y" * 7
        assert (len(workspace), len(stream)) == (64, 200)
        result = await store.append(workspace, stream, [ev()])
        assert result.positions == [1]

    async def test_expected_version_below_any_is_rejected(
        self, store: EventStore, workspace: str
    ) -> None:
        with pytest.raises(InvalidArgument):
            await store.append(workspace, "s", [ev()], ANY - 1)
        assert await store.head(workspace) == 0

    async def test_append_size_is_bounded(self, store: EventStore, workspace: str) -> None:
        with pytest.raises(InvalidArgument, match="at most"):
            await store.append(workspace, "s", evs(MAX_EVENTS_PER_APPEND + 1))
        assert await store.head(workspace) == 0
        result = await store.append(workspace, "s", evs(MAX_EVENTS_PER_APPEND))
        assert result.version == MAX_EVENTS_PER_APPEND - 1

    @pytest.mark.parametrize(
        "bad",
        [
            NewEvent(type="x", data=[1, 2]),
            NewEvent(type="x", data="text"),
            NewEvent(type="x", data=None),
            NewEvent(type="x", data={1: "int key"}),
            NewEvent(type="x", data={"obj": object()}),
            NewEvent(type="x", data={"big": 2**64}),
            NewEvent(type="x", data={}, occurred_at=datetime(2024, 1, 1, 12, 0)),
            NewEvent(type="x", data=nested(100_000)),
        ],
        ids=[
            "list",
            "str",
            "none",
            "int-key",
            "object",
            "int-overflow",
            "naive-occurred-at",
            "nested-too-deeply",
        ],
    )
    async def test_event_no_read_could_decode_is_rejected_whole(
        self, store: EventStore, workspace: str, bad: NewEvent
    ) -> None:
        await store.append(workspace, "s", [ev(0)])
        before = await snapshot(store, workspace, "s")

        with pytest.raises(InvalidEvent):
            await store.append(workspace, "s", [ev(1), bad, ev(2)], 0)

        assert await snapshot(store, workspace, "s") == before
        assert len(await store.read_log(workspace)) == 1  # and the log still decodes

    async def test_an_integer_no_read_could_decode_is_named_by_its_place(
        self, store: EventStore, workspace: str
    ) -> None:
        bad = NewEvent(type="x", data={"lines": [{"cents": 1}, {"cents": 10**29}]})
        with pytest.raises(InvalidEvent, match=r"data\.lines\[1\]\.cents is an integer beyond"):
            await store.append(workspace, "s", [bad])
        with pytest.raises(InvalidEvent, match="schema_version is an integer beyond"):
            await store.append(workspace, "s", [NewEvent(type="x", data={}, schema_version=2**64)])
        assert await store.head(workspace) == 0

    @pytest.mark.parametrize(
        ("bad", "says"),
        [
            (NewEvent(type="", data={}), "'' is not an event type"),
            (NewEvent(type="9lives", data={}), "'9lives' is not an event type"),
            (NewEvent(type="Placed\n", data={}), "'Placed\\n' is not an event type"),
            (NewEvent(type="x" * 101, data={}), "is not an event type"),
            (NewEvent(type=["A"], data={}), "['A'] is not an event type"),  # type: ignore[arg-type]
            (
                NewEvent(type="x", data={"total": float("nan")}),
                "event data holds a number JSON cannot carry (nan) at data.total",
            ),
            (
                NewEvent(type="x", data={"lines": [{"cents": 1.5}, {"cents": float("-inf")}]}),
                "(-inf) at data.lines[1].cents",
            ),
            (new_event(ParcelScanned(parcel="p", kg=float("inf"))), "(inf) at data.kg"),
        ],
        ids=["empty-type", "digit-first", "newline", "too-long", "not-str", "nan", "inf", "typed"],
    )
    async def test_event_http_would_refuse_is_rejected_whole(
        self, store: EventStore, workspace: str, bad: NewEvent, says: str
    ) -> None:
        # what HTTP refuses (an event type off its pattern, a number JSON has not) would be
        # stored, then read back by HTTP as something else (null for NaN): refused as HTTP does
        await store.append(workspace, "s", [ev(0)])
        before = await snapshot(store, workspace, "s")

        with pytest.raises(InvalidEvent) as info:
            await store.append(workspace, "s", [ev(1), bad, ev(2)], 0)
        [failed] = await store.append_batch([AppendRequest(workspace, "s", [bad], 0)])

        assert says in info.value.message
        assert isinstance(failed, InvalidEvent) and failed.message == info.value.message
        assert await snapshot(store, workspace, "s") == before
        # near the edge, and floats that only look like it, are stored
        fine = [
            ev(1, type="A" + "b" * 99, big=1.7976931348623157e308, small=-1.7976931348623157e308),
            ev(2, type="a.B_c:d-9", raw=bytes.fromhex("cb7ff8") * 3),
        ]
        await store.append(workspace, "s", fine, 0)
        stored = await store.read_stream(workspace, "s", from_version=1)
        assert [e.data for e in stored] == [e.data for e in fine]

    # -- concurrency ------------------------------------------------------------

    async def test_racing_appenders_exactly_one_wins_each_version(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        rounds = 15
        winners: list[uuid.UUID] = []
        for version in range(rounds):
            expected = NO_STREAM if version == 0 else version - 1
            attempts = [ev(version, writer=i) for i in range(len(peers))]
            outcomes = await asyncio.gather(
                *(
                    peer.append(workspace, "hot", [event], expected)
                    for peer, event in zip(peers, attempts, strict=True)
                ),
                return_exceptions=True,
            )
            won = [
                (event, out)
                for event, out in zip(attempts, outcomes, strict=True)
                if isinstance(out, AppendResult)
            ]
            lost = [out for out in outcomes if not isinstance(out, AppendResult)]
            assert len(won) == 1, outcomes
            assert won[0][1].versions == [version]
            assert len(lost) == len(peers) - 1
            for exc in lost:
                assert isinstance(exc, ConcurrencyError)
                assert (exc.expected, exc.actual) == (expected, version)
            winners.append(won[0][0].event_id)

        events = await peers[0].read_stream(workspace, "hot")
        assert [e.version for e in events] == list(range(rounds))
        assert [e.position for e in events] == list(range(1, rounds + 1))
        assert [e.event_id for e in events] == winners
        assert await peers[0].head(workspace) == rounds

    async def test_optimistic_retry_loops_lose_and_duplicate_nothing(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        per_writer = 6
        clashes = 0

        async def writer(store: EventStore, w: int) -> None:
            nonlocal clashes
            version = await store.stream_version(workspace, "hot")
            for n in range(per_writer):
                event = ev(n, writer=w)
                while True:
                    await asyncio.sleep(0)  # let the others in, as real I/O would
                    try:
                        result = await store.append(workspace, "hot", [event], version)
                    except ConcurrencyError as exc:
                        assert exc.actual > exc.expected == version
                        clashes += 1
                        version = exc.actual
                    else:
                        version = result.version
                        break

        await asyncio.gather(*(writer(p, w) for w, p in enumerate(peers)))

        total = per_writer * len(peers)
        events = await peers[0].read_stream(workspace, "hot")
        assert [e.version for e in events] == list(range(total))
        assert [e.position for e in events] == list(range(1, total + 1))
        assert len({e.event_id for e in events}) == total
        for w in range(len(peers)):  # each writer's events all landed, in its order
            assert [e.data["n"] for e in events if e.data["writer"] == w] == list(range(per_writer))
        assert clashes > 0  # the writers really raced

    async def test_racing_retries_of_one_event_append_it_once(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        await peers[0].append(workspace, "s", [ev(-1)])
        event = ev(0)
        results = await asyncio.gather(*(p.append(workspace, "s", [event]) for p in peers))

        assert sorted(r.deduplicated for r in results) == [False] + [True] * (len(peers) - 1)
        assert {(tuple(r.versions), tuple(r.positions)) for r in results} == {((1,), (2,))}
        assert await peers[0].head(workspace) == 2

    async def test_racing_streams_share_one_gapless_log(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        async def writer(store: EventStore, w: int) -> None:
            for n in range(5):
                await store.append(workspace, f"s{w}", [ev(n), ev(n)], ANY)

        await asyncio.gather(*(writer(p, w) for w, p in enumerate(peers)))

        log = await peers[0].read_log(workspace)
        assert [e.position for e in log] == list(range(1, 10 * len(peers) + 1))
        for w in range(len(peers)):
            stream = [e for e in log if e.stream == f"s{w}"]
            assert [e.version for e in stream] == list(range(10))

    # -- append_batch -----------------------------------------------------------

    async def test_append_batch_isolates_failures(self, store: EventStore, workspace: str) -> None:
        await store.append(workspace, "clash", evs(3))
        other = f"{workspace}b"
        results = await store.append_batch(
            [
                AppendRequest(workspace, "a", evs(2), NO_STREAM),
                AppendRequest(workspace, "clash", [ev(9)], 0),
                AppendRequest(other, "a", [ev(1)], NO_STREAM),
                AppendRequest(workspace, "bad name", [ev(2)]),
                AppendRequest(workspace, "a", [ev(3)], 1),  # sees the first request's append
            ]
        )

        ok_a, clash, ok_other, bad, ok_a2 = results
        assert isinstance(ok_a, AppendResult) and ok_a.positions == [4, 5]
        assert isinstance(clash, ConcurrencyError) and clash.actual == 2
        assert isinstance(ok_other, AppendResult) and ok_other.positions == [1]
        assert isinstance(bad, InvalidArgument)
        assert isinstance(ok_a2, AppendResult) and ok_a2.versions == [2]
        assert await store.stream_version(workspace, "clash") == 2
        assert [e.data["n"] for e in await store.read_stream(workspace, "a")] == [0, 1, 3]
        assert await store.head(workspace) == 6
        assert await store.head(other) == 1

    async def test_append_batch_answers_as_appends_one_after_another(
        self, store: EventStore, workspace: str
    ) -> None:
        expected, expected_logs = await mixed_appends(store, f"{workspace}seq", batched=False)
        got, logs = await mixed_appends(store, workspace, batched=True)

        assert got == expected
        assert logs == expected_logs

        def ok(versions: list[int], positions: list[int], version: int, dedup: bool) -> Any:
            return AppendResult("", version, versions, positions, dedup)

        def shape(o: Any) -> Any:  # results without their stream names, errors by kind
            if isinstance(o, AppendResult):
                return msgspec.structs.replace(o, stream="")
            return o[0]

        assert [shape(o) for o in got] == [
            ok([2, 3], [3, 4], 3, False),
            ok([0], [5], 0, False),
            "ConcurrencyError",
            ok([0, 1], [1, 2], 1, True),
            ok([0], [1], 0, True),
            ok([1, 4], [2, 6], 4, False),
            "InvalidArgument",
            ok([0, 1, 2], [2, 3, 4], 2, False),
            ok([1], [7], 1, False),
            ok([0], [5], 0, True),
            "InvalidArgument",
            "InvalidArgument",
            "InvalidEvent",
            "ConcurrencyError",
            "InvalidArgument",
            ok([0, 1, 2], [8, 9, 10], 2, False),
            ok([1], [5], 1, False),
            "ConcurrencyError",
        ]
        assert [
            o[1] for o in got if not isinstance(o, AppendResult) and o[0] == "ConcurrencyError"
        ] == [
            "stream 's1' is at version 3, expected 1",
            "stream 's2' is at version 1, expected 7",
            "stream 's1' is at version 4, expected -1",
        ]

    async def test_append_batch_of_many_requests(self, store: EventStore, workspace: str) -> None:
        requests = [AppendRequest(workspace, f"s{i}", evs(3), NO_STREAM) for i in range(200)]
        results = await store.append_batch(requests)

        assert all(isinstance(r, AppendResult) for r in results)
        positions = [p for r in results if isinstance(r, AppendResult) for p in r.positions]
        assert positions == list(range(1, 601))
        retried = await store.append_batch(requests)
        assert all(isinstance(r, AppendResult) and r.deduplicated for r in retried)
        assert await store.head(workspace) == 600

    async def test_append_batch_empty(self, store: EventStore) -> None:
        assert await store.append_batch([]) == []

    async def test_an_append_may_bring_the_time_its_events_were_recorded_at(
        self, store: EventStore, workspace: str
    ) -> None:
        then = datetime(2021, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
        # another zone, and finer than a millisecond: kept as the same instant, to the ms
        fine = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))
        before = datetime.now(UTC) - timedelta(seconds=5)
        a, b = evs(2), ev(2)
        results = await store.append_batch(
            [
                AppendRequest(workspace, "a", a, NO_STREAM, recorded_at=then),
                AppendRequest(workspace, "b", [b], NO_STREAM),  # the store's clock
                AppendRequest(workspace, "a", [ev(3)], 1, recorded_at=fine),
            ]
        )
        assert all(isinstance(r, AppendResult) for r in results), results

        log = await store.read_log(workspace)
        assert [e.recorded_at for e in log[:2]] == [then, then]
        assert before <= log[2].recorded_at <= datetime.now(UTC) + timedelta(seconds=5)
        assert log[3].recorded_at == datetime(2000, 1, 1, 4, 59, 59, 999000, tzinfo=UTC)
        assert [e.recorded_at for e in await store.read_stream(workspace, "a")] == [
            then, then, log[3].recorded_at,
        ]  # fmt: skip
        # a retry with another time is the append that landed, at the time it landed
        [again] = await store.append_batch([AppendRequest(workspace, "b", [b], recorded_at=then)])
        assert isinstance(again, AppendResult) and again.deduplicated
        assert await store.read_log(workspace) == log
        # a time in no zone names no instant
        [naive] = await store.append_batch(
            [AppendRequest(workspace, "c", [ev()], recorded_at=datetime(2021, 3, 4))]
        )
        assert isinstance(naive, InvalidArgument) and "timezone-aware" in naive.message
        assert await store.head(workspace) == 4

    # -- read_stream ------------------------------------------------------------

    async def test_read_stream_directions_and_limits(
        self, store: EventStore, workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(10))
        await store.append(workspace, "noise", evs(3))

        async def ns(**kw: Any) -> list[int]:
            return [e.version for e in await store.read_stream(workspace, "s", **kw)]

        assert await ns() == list(range(10))
        assert await ns(from_version=4) == [4, 5, 6, 7, 8, 9]
        assert await ns(from_version=4, limit=3) == [4, 5, 6]
        assert await ns(limit=2) == [0, 1]
        assert await ns(from_version=9) == [9]
        assert await ns(from_version=10) == []
        assert await ns(from_version=-3) == list(range(10))
        assert await ns(backwards=True) == list(range(9, -1, -1))
        assert await ns(backwards=True, limit=3) == [9, 8, 7]
        assert await ns(backwards=True, from_version=4) == [4, 3, 2, 1, 0]
        assert await ns(backwards=True, from_version=4, limit=2) == [4, 3]
        assert await ns(backwards=True, from_version=0) == [0]
        assert await ns(backwards=True, from_version=50, limit=2) == [9, 8]
        assert await ns(backwards=True, from_version=-1) == []
        assert await ns(limit=0) == []
        assert await store.read_stream(workspace, "missing") == []
        assert await store.read_stream(workspace, "missing", backwards=True) == []

    async def test_read_stream_pages_past_a_thousand(
        self, store: EventStore, workspace: str
    ) -> None:
        total = 2500
        for start in range(0, total, 1000):
            await store.append(workspace, "long", evs(min(1000, total - start), start=start))
            await store.append(workspace, "interleaved", [ev(start)])

        forwards = await store.read_stream(workspace, "long")
        assert [e.version for e in forwards] == list(range(total))
        assert [e.data["n"] for e in forwards] == list(range(total))
        backwards = await store.read_stream(workspace, "long", backwards=True)
        assert backwards == forwards[::-1]
        window = await store.read_stream(workspace, "long", from_version=999, limit=1002)
        assert [e.version for e in window] == list(range(999, 2001))
        back = await store.read_stream(
            workspace, "long", from_version=2100, backwards=True, limit=1500
        )
        assert [e.version for e in back] == list(range(2100, 600, -1))
        assert await store.stream_version(workspace, "long") == total - 1

    async def test_stream_version(self, store: EventStore, workspace: str) -> None:
        assert await store.stream_version(workspace, "s") == -1
        await store.append(workspace, "s", evs(4))
        assert await store.stream_version(workspace, "s") == 3
        assert await store.stream_version(workspace, "t") == -1

    # -- the workspace log -------------------------------------------------------

    async def test_read_log_after_with_limit_in_pages(
        self, store: EventStore, workspace: str
    ) -> None:
        for i in range(25):
            await store.append(workspace, f"s{i % 3}", [ev(i)])

        assert [e.position for e in await store.read_log(workspace, after=20)] == [
            21, 22, 23, 24, 25,
        ]  # fmt: skip
        assert [e.position for e in await store.read_log(workspace, after=5, limit=3)] == [6, 7, 8]
        assert await store.read_log(workspace, after=25) == []
        assert await store.read_log(workspace, after=99) == []
        assert await store.read_log(workspace, limit=0) == []
        assert len(await store.read_log(workspace, after=-5)) == 25
        pages, after = [], 0
        while page := await store.read_log(workspace, after=after, limit=10):
            pages.append([e.data["n"] for e in page])
            after = page[-1].position
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [n for page in pages for n in page] == list(range(25))

    async def test_head_and_workspaces(self, store: EventStore, workspace: str) -> None:
        empty, failed = f"{workspace}e", f"{workspace}f"
        assert await store.head(workspace) == 0
        assert await store.read_log(workspace) == []
        with pytest.raises(ConcurrencyError):
            await store.append(failed, "s", [ev()], 3)

        await store.append(workspace, "s", evs(3))
        await store.append(workspace, "t", evs(2))

        assert await store.head(workspace) == 5
        names = await store.workspaces()
        assert workspace in names
        assert empty not in names
        assert failed not in names  # a workspace is listed once it holds an event
        assert names == sorted(names)

    async def test_tail_returns_at_once_when_events_exist(
        self, store: EventStore, workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(5))
        started = time.monotonic()
        got = await store.tail({workspace: 2}, block_ms=5000)
        assert time.monotonic() - started < 1
        assert [e.position for e in got[workspace]] == [3, 4, 5]
        got = await store.tail({workspace: 0}, limit=2)
        assert [e.position for e in got[workspace]] == [1, 2]

    async def test_tail_waits_block_ms_then_returns_nothing(
        self, store: EventStore, workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(2))
        started = time.monotonic()
        assert await store.tail({workspace: 2}, block_ms=300) == {}
        assert 0.25 <= time.monotonic() - started < 3
        started = time.monotonic()
        never_waits = store.tail({f"{workspace}x": 0}, block_ms=0)
        assert await asyncio.wait_for(never_waits, 5) == {}
        assert await store.tail({}, block_ms=10_000) == {}
        assert time.monotonic() - started < 0.5

    async def test_tail_wakes_up_on_a_concurrent_append(
        self, store: EventStore, peers: list[EventStore], workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(1))
        idle = f"{workspace}-idle"
        waiting = asyncio.create_task(store.tail({idle: 0, workspace: 1}, block_ms=10_000))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        await peers[-1].append(workspace, "t", [ev(7), ev(8)])

        got = await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 2
        assert list(got) == [workspace]  # only the workspaces that have events
        assert [(e.position, e.data["n"]) for e in got[workspace]] == [(2, 7), (3, 8)]

    async def test_tail_of_a_workspace_with_no_log_waits_for_its_first_events(
        self, store: EventStore, peers: list[EventStore], workspace: str
    ) -> None:
        waiting = asyncio.create_task(store.tail({workspace: 0}, block_ms=10_000))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await peers[-1].append(workspace, "s", evs(2))

        got = await asyncio.wait_for(waiting, 5)
        assert {ws: [e.position for e in events] for ws, events in got.items()} == {
            workspace: [1, 2]
        }

    async def test_tail_wakes_up_on_a_new_workspace_and_names_it_once(
        self, store: EventStore, peers: list[EventStore], workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(1))
        new = f"{workspace}-new"
        follow = {"block_ms": 10_000, "new_workspaces": True}
        waiting = asyncio.create_task(store.tail({workspace: 1}, **follow))
        await asyncio.sleep(0.2)
        # neither an append to a workspace it reads already, nor one to a new workspace that
        # fails (nothing written), is a new workspace
        await peers[-2].append(workspace, "s", evs(1))
        with pytest.raises(ConcurrencyError):
            await peers[-1].append(f"{new}-failed", "s", evs(1), expected_version=3)
        assert (await asyncio.wait_for(waiting, 5)).keys() == {workspace}
        waiting = asyncio.create_task(store.tail({workspace: 2}, **follow))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await peers[-1].append(new, "s", evs(2))

        assert await asyncio.wait_for(waiting, 5) == {new: []}
        # named once: the next read waits for events again, and returns them
        assert await store.tail({workspace: 2}, block_ms=300, new_workspaces=True) == {}
        got = await store.tail({workspace: 2, new: 0}, block_ms=5000, new_workspaces=True)
        assert {ws: [e.position for e in events] for ws, events in got.items()} == {new: [1, 2]}
        # the workspace whose first append failed is new once one lands
        await peers[-1].append(f"{new}-failed", "s", evs(1))
        got = await store.tail({workspace: 2, new: 2}, block_ms=5000, new_workspaces=True)
        assert got == {f"{new}-failed": []}

    async def test_tail_with_no_workspace_to_read_waits_for_a_new_one(
        self, store: EventStore, peers: list[EventStore], workspace: str
    ) -> None:
        assert await store.workspaces() is not None  # from here on, new workspaces are named
        waiting = asyncio.create_task(store.tail({}, block_ms=10_000, new_workspaces=True))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await peers[-1].append(workspace, "s", evs(1))

        assert await asyncio.wait_for(waiting, 5) == {workspace: []}

    async def test_tail_names_no_new_workspace_unless_asked(
        self, store: EventStore, peers: list[EventStore], workspace: str
    ) -> None:
        await store.append(workspace, "s", evs(1))
        assert await store.tail({workspace: 1}, block_ms=0, new_workspaces=True) == {}
        await peers[-1].append(f"{workspace}-new", "s", evs(1))
        assert await store.tail({workspace: 1}, block_ms=300) == {}

    async def test_tail_reads_many_workspaces_at_once(
        self, store: EventStore, workspace: str
    ) -> None:
        a, b, c = (f"{workspace}{n}" for n in "abc")
        await store.append(a, "s", evs(3))
        await store.append(b, "s", evs(2))
        await store.append(c, "s", evs(1))
        got = await store.tail({a: 1, b: 0, c: 1}, limit=1, block_ms=5000)
        assert {ws: [e.position for e in events] for ws, events in got.items()} == {
            a: [2],
            b: [1],
        }
        assert all(e.workspace == ws for ws, events in got.items() for e in events)

    # -- held streams -------------------------------------------------------------

    async def test_held_streams_are_named_with_their_length_until_released(
        self, store: EventStore, workspace: str
    ) -> None:
        assert await store.held_streams(workspace, ["run-a"]) == {}
        await store.hold_streams(workspace, {"run-a": 2, "run-b": 1})
        await store.hold_streams(workspace, {"run-b": 3})  # held again: the hold moves
        assert await store.held_streams(workspace, ["run-a", "run-b", "run-c"]) == {
            "run-a": 2,
            "run-b": 3,
        }
        assert await store.held_streams(f"{workspace}-other", ["run-a"]) == {}
        await store.release_streams(workspace, ["run-a", "run-c"])
        assert await store.held_streams(workspace, ["run-a", "run-b"]) == {"run-b": 3}
        assert await store.held_streams(workspace, []) == {}

    # -- fidelity ---------------------------------------------------------------

    async def test_envelope_and_data_round_trip(self, store: EventStore, workspace: str) -> None:
        data: dict[str, Any] = {
            "text": "héllo wörld ✓ 日本語 🚀",
            "empty_text": "",
            "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
            "floats": [0.1, -2.5, 1e300, 5e-324],
            "bools": [True, False],
            "none": None,
            "nested": {"list": [1, [2, [3, {"deep": "x"}]]], "dict": {"a": {"b": {}}}},
            "empty": {"list": [], "dict": {}},
            "ünïcode kéy": 1,
        }
        occurred = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=2)))
        event = NewEvent(
            type="OrderPlaced",
            data=data,
            event_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            schema_version=3,
            occurred_at=occurred,
            correlation_id="corr-1",
            causation_id="cause-1",
        )
        before = datetime.now(UTC) - timedelta(seconds=5)
        await store.append(workspace, "order-9", [ev(0)])
        await store.append(workspace, "order-9", [event])

        [got] = await store.read_stream(workspace, "order-9", from_version=1)
        assert got.event_id == event.event_id
        assert got.type == "OrderPlaced"
        assert got.schema_version == 3
        assert (got.stream, got.version, got.position, got.workspace) == (
            "order-9", 1, 2, workspace,
        )  # fmt: skip
        assert got.occurred_at == occurred
        assert got.occurred_at.utcoffset() == timedelta(0)
        assert (got.correlation_id, got.causation_id) == ("corr-1", "cause-1")
        assert got.data == data
        assert [type(b) for b in got.data["bools"]] == [bool, bool]
        assert all(type(f) is float for f in got.data["floats"])
        assert all(type(i) is int for i in got.data["ints"])
        assert got.recorded_at.tzinfo is not None
        assert before <= got.recorded_at <= datetime.now(UTC) + timedelta(seconds=5)
        # every read hands back the very same record
        assert (await store.read_log(workspace, after=1))[0] == got
        assert (await store.tail({workspace: 1}, block_ms=10))[workspace][0] == got
        assert (await store.read_stream(workspace, "order-9", backwards=True))[0] == got

    async def test_defaults_round_trip(self, store: EventStore, workspace: str) -> None:
        event = NewEvent(type="Pinged", data={})
        await store.append(workspace, "s", [event])
        [got] = await store.read_log(workspace)
        assert (got.schema_version, got.correlation_id, got.causation_id) == (1, None, None)
        assert got.data == {}
        assert got.occurred_at == event.occurred_at

    async def test_workspaces_are_isolated(self, store: EventStore, workspace: str) -> None:
        other = f"{workspace}x"
        await store.append(workspace, "s", [ev(1), ev(2)], NO_STREAM)
        result = await store.append(other, "s", [ev(3)], NO_STREAM)  # same stream name

        assert result.positions == [1]
        assert [e.data["n"] for e in await store.read_log(workspace)] == [1, 2]
        assert [e.data["n"] for e in await store.read_log(other)] == [3]
        assert [e.data["n"] for e in await store.read_stream(other, "s")] == [3]
        assert {e.workspace for e in await store.read_stream(workspace, "s")} == {workspace}
        assert (await store.stream_version(workspace, "s"), await store.head(workspace)) == (1, 2)
        assert (await store.stream_version(other, "s"), await store.head(other)) == (0, 1)
        assert await store.tail({other: 1}, block_ms=50) == {}

    async def test_dedup_is_per_workspace(self, store: EventStore, workspace: str) -> None:
        event = ev()
        await store.append(workspace, "s", [event])
        again = await store.append(f"{workspace}x", "s", [event])
        assert again.deduplicated is False

    # -- typed events -----------------------------------------------------------

    async def test_typed_event_round_trips(self, store: EventStore, workspace: str) -> None:
        payload = ItemPacked(
            sku="SKU-ü1",
            quantity=3,
            tags=("fragile", "gift"),
            packed_at=datetime(2025, 5, 1, 8, 30, tzinfo=UTC),
            parcel=uuid.uuid4(),
        )
        event = new_event(payload, correlation_id="c1", causation_id="k1")
        assert registry.get(ItemPacked.topic) is ItemPacked

        await store.append(workspace, "parcel-1", [event])
        [got] = await store.read_stream(workspace, "parcel-1")

        assert (got.type, got.schema_version) == ("contract-test.ItemPacked", 1)
        assert (got.event_id, got.correlation_id, got.causation_id) == (event.event_id, "c1", "k1")
        assert got.data["sku"] == "SKU-ü1" and got.data["tags"] == ["fragile", "gift"]
        decoded = registry.decode(got, ItemPacked)
        assert type(decoded) is ItemPacked
        assert decoded == payload

    async def test_old_schema_is_upcast_on_read(self, store: EventStore, workspace: str) -> None:
        local = EventRegistry()
        local.register(ParcelWeighed)

        @local.upcaster(ParcelWeighed.topic, 1)
        def kg_to_grams(data: dict[str, Any]) -> dict[str, Any]:
            return {"grams": round(data["kg"] * 1000), "scale": "unknown"}

        old = NewEvent(type=ParcelWeighed.topic, schema_version=1, data={"kg": 1.25})
        new = new_event(ParcelWeighed(grams=700, scale="dock-2"))
        await store.append(workspace, "parcel-2", [old, new])
        got_old, got_new = await store.read_stream(workspace, "parcel-2")

        assert got_old.schema_version == 1 and got_old.data == {"kg": 1.25}  # stored as written
        assert local.decode(got_old, ParcelWeighed) == ParcelWeighed(grams=1250, scale="unknown")
        assert got_new.schema_version == 2
        assert local.decode(got_new, ParcelWeighed) == ParcelWeighed(grams=700, scale="dock-2")
        bare = EventRegistry()  # knows v2 but not how to get there from v1
        bare.register(ParcelWeighed)
        with pytest.raises(InvalidEvent, match="no upcaster"):
            bare.decode(got_old, ParcelWeighed)


class TestMemoryEventStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        store = MemoryEventStore()
        yield store
        await store.close()

    @pytest.fixture
    async def peers(self, store: EventStore) -> AsyncIterator[list[EventStore]]:
        yield [store] * PEERS  # one process memory: every writer shares the object


class TestRedisEventStore(StoreContract):
    @pytest.fixture
    async def store(self, redis_store: RedisEventStore) -> AsyncIterator[EventStore]:
        yield redis_store

    @pytest.fixture
    async def peers(self, redis_url: str) -> AsyncIterator[list[EventStore]]:
        stores = [RedisEventStore.from_url(redis_url) for _ in range(PEERS)]
        try:
            yield list(stores)
        finally:
            for s in stores:
                await s.close()

    async def test_peers_use_separate_connections(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        await asyncio.gather(*(p.stream_version(workspace, "s") for p in peers))
        ids = set()
        for p in peers:
            assert isinstance(p, RedisEventStore)
            ids.add(await p.client.client_id())
        assert len(ids) == PEERS

    async def test_a_store_reads_what_another_client_wrote(
        self, peers: list[EventStore], workspace: str
    ) -> None:
        event = NewEvent(type="x", data={"k": [1, {"v": None}]})
        await peers[0].append(workspace, "s", [event])
        [got] = await peers[1].read_stream(workspace, "s")
        assert got.event_id == event.event_id and got.data == event.data
        assert workspace in await peers[2].workspaces()


async def test_both_stores_record_identical_events(
    redis_store: RedisEventStore, workspace: str
) -> None:
    memory = MemoryEventStore()
    events = [
        NewEvent(type="A", data={"x": [1, 2.5, "ß", None, True]}, correlation_id="c"),
        new_event(ParcelWeighed(grams=5, scale="s"), causation_id="k"),
        NewEvent(type="B", data={"nested": {"deep": [{}]}}, schema_version=4),
    ]
    for store in (memory, redis_store):
        await store.append(workspace, "s", events[:2], NO_STREAM)
        await store.append(workspace, "t", events[2:], NO_STREAM)

    def comparable(e: RecordedEvent) -> dict[str, Any]:
        fields = msgspec.structs.asdict(e)
        del fields["recorded_at"]
        return fields

    from_memory = [comparable(e) for e in await memory.read_log(workspace)]
    from_redis = [comparable(e) for e in await redis_store.read_log(workspace)]
    assert len(from_memory) == 3
    assert from_memory == from_redis


async def test_a_log_entry_reads_whatever_the_order_of_its_fields(
    redis_store: RedisEventStore, workspace: str
) -> None:
    events = [NewEvent(type="A", data={"n": n}) for n in range(3)]
    await redis_store.append(workspace, "s", events[:2], NO_STREAM)
    # an entry written with its fields in another order, between two the script wrote
    blob = codec.encode(events[2])
    fields = {"e": blob, "t": "1700000000123", "v": "0", "s": "other"}
    await redis_store.client.xadd(keys.log_key(workspace), fields, id="0-3")
    await redis_store.append(workspace, "s", [NewEvent(type="B", data={})], 1)

    log = await redis_store.read_log(workspace)
    assert [(e.type, e.stream, e.version, e.position) for e in log] == [
        ("A", "s", 0, 1),
        ("A", "s", 1, 2),
        ("A", "other", 0, 3),
        ("B", "s", 2, 4),
    ]
    assert log[2].event_id == events[2].event_id and log[2].data == {"n": 2}
    assert log[2].recorded_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert log[0].recorded_at == log[1].recorded_at  # one append, one time
    assert log[1].recorded_at <= log[3].recorded_at


async def test_an_outbox_is_written_with_an_append_whose_events_are_all_new(
    redis_store: RedisEventStore, workspace: str
) -> None:
    channel, other, group = f"ob-{workspace}", f"ob2-{workspace}", "g"
    client = redis_store.client
    await client.xgroup_create(channel, group, id="0", mkstream=True)
    await client.xadd(channel, {"__data__": b"cmd"})
    [(_, [(entry, _)])] = await client.xreadgroup(group, "c", {channel: ">"}, count=1)
    outbox = Outbox([(other, b"next"), (channel, b"again")], ack=(channel, group, entry))
    first = [NewEvent(type="A", data={})]

    # a clash writes nothing of it
    clash = AppendRequest(workspace, "s", first, 3, outbox)
    [refused] = await redis_store.append_batch([clash])
    assert isinstance(refused, ConcurrencyError)
    assert await client.xlen(other) == 0
    assert (await client.xpending(channel, group))["pending"] == 1

    request = AppendRequest(workspace, "s", first, NO_STREAM, outbox)
    plain = AppendRequest(workspace, "t", [NewEvent(type="B", data={})], NO_STREAM)
    [done, alongside] = await redis_store.append_batch([request, plain])
    assert isinstance(done, AppendResult) and isinstance(alongside, AppendResult)
    assert (done.version, alongside.version) == (0, 0)
    assert [f[b"__data__"] for _, f in await client.xrange(other)] == [b"next"]
    assert [f[b"__data__"] for _, f in await client.xrange(channel)] == [b"cmd", b"again"]
    assert (await client.xpending(channel, group))["pending"] == 0

    # a retry of the append that landed writes it no second time
    [again] = await redis_store.append_batch([request])
    assert isinstance(again, AppendResult) and again.deduplicated
    assert await client.xlen(other) == 1
    await client.delete(channel, other)


async def test_the_memory_store_refuses_an_outbox(workspace: str) -> None:
    store = MemoryEventStore()
    request = AppendRequest(workspace, "s", [NewEvent(type="A", data={})], NO_STREAM, Outbox())
    [refused] = await store.append_batch([request])
    assert isinstance(refused, TypeError)
    assert await store.read_log(workspace) == []


def test_same_server_means_same_address_database_and_user() -> None:
    def same(a: str, b: str) -> bool:
        return same_server(connect(a), connect(b))

    assert same("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/0")
    assert same("unix:///tmp/s.sock", "unix:///tmp/s.sock")
    assert not same("unix:///tmp/s.sock", "unix:///tmp/t.sock")
    assert not same("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1")
    assert not same("redis://u:p@127.0.0.1:6379", "redis://127.0.0.1:6379")
