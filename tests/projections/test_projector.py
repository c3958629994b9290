"""The projector over real stores and the real FalkorDB views: live, catching up, rebuilding."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from projection_helpers import (
    KINDS,
    MENTIONS,
    Clock,
    Lifecycle,
    interleave,
    lifecycle,
    poison,
    raw,
    snapshot,
)

from stageline.actors.events import RunSubmitted
from stageline.events import AppendRequest, EventStore, NewEvent
from stageline.events.memory_store import MemoryEventStore
from stageline.events.redis_store import RedisEventStore
from stageline.projections import FalkorDBViews, Projector, RunStatus, RunStatusChanges
from stageline.projections.projector import next_delay


@pytest.fixture
async def redis_store(own_url: str) -> AsyncIterator[RedisEventStore]:
    store = RedisEventStore.from_url(own_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def views(own_url: str) -> AsyncIterator[FalkorDBViews]:
    views = FalkorDBViews.from_url(own_url)
    try:
        yield views
    finally:
        await views.close()


class OnlyWorkspace:
    """The store, showing ``run`` only this test's workspace (the server holds others')."""

    def __init__(self, store: EventStore, workspace: str) -> None:
        self._store, self._workspace = store, workspace

    async def workspaces(self) -> list[str]:
        return [ws for ws in await self._store.workspaces() if ws == self._workspace]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class RecordingViews:
    """The real views, noting each batch size and failing the writes ``fail`` picks.

    ``fail(n)`` for the n-th write returns None (write normally), "before" (raise
    without writing) or "after" (write, then raise as if the reply were lost).
    """

    def __init__(self, views: FalkorDBViews, fail: Callable[[int], str | None] = lambda n: None):
        self.views, self.fail = views, fail
        self.batches: list[int] = []
        self.failures = 0

    async def apply(self, workspace: str, changes: RunStatusChanges, *, expected: int) -> bool:
        self.batches.append(changes.events)
        how = self.fail(len(self.batches))
        if how == "before":
            self.failures += 1
            raise ConnectionError("FalkorDB went away")
        applied = await self.views.apply(workspace, changes, expected=expected)
        if how == "after":
            self.failures += 1
            raise ConnectionError("reply lost")
        return applied

    async def checkpoint(self, workspace: str) -> int:
        return await self.views.checkpoint(workspace)

    async def drop(self, workspace: str) -> None:
        await self.views.drop(workspace)


KIND_ORDER = list(KINDS)  # run002 is "retried"


def scenario(runs_per_kind: int = 3) -> tuple[list[Lifecycle], list[tuple[str, NewEvent]]]:
    """Runs of every kind, interleaved, with dead-letter and foreign events in between."""
    clock = Clock()
    lives = [
        lifecycle(f"run{i:03d}", KIND_ORDER[i % len(KINDS)], clock, pipeline=f"p{i % 3}")
        for i in range(len(KINDS) * runs_per_kind)
    ]
    pairs = interleave(lives)
    for i in range(0, len(pairs), 9):
        pairs.insert(i, ("orders-1", raw("OrderPlaced", {"n": i})))
    pairs.insert(5, ("run-run000", raw("Annotated", {"note": "not ours"})))
    for n, closed in enumerate([None, "redriven", "discarded"]):
        pairs[len(pairs) * n // 3 : len(pairs) * n // 3] = poison(
            f"poison{n}", clock, closed=closed
        )
    return lives, pairs


async def append_all(
    store: EventStore, workspace: str, pairs: list[tuple[str, NewEvent]], chunk: int = 50
) -> int:
    for start in range(0, len(pairs), chunk):
        requests = [AppendRequest(workspace, s, [e]) for s, e in pairs[start : start + chunk]]
        results = await store.append_batch(requests)
        assert not [r for r in results if isinstance(r, Exception)]
    return await store.head(workspace)


def expect_scenario(view: dict[str, Any], lives: list[Lifecycle]) -> None:
    n = len(lives) // len(KINDS)
    expected = Counter(life.status for life in lives)
    assert view["stats"]["counts"] == {s.value: expected.get(s.value, 0) for s in RunStatus}
    assert {run_id: run["status"] for run_id, run in view["runs"].items()} == {
        life.run_id: life.status for life in lives
    }
    retried = view["runs"]["run002"]
    assert [s["attempts"] for s in retried["stages"]] == [2, 1, 1]
    statuses = Counter((d["kind"], d["status"]) for d in view["dead_letters"])
    assert statuses == {
        ("run", "open"): n,
        ("run", "redriven"): n,
        ("poison", "open"): 1,
        ("poison", "redriven"): 1,
        ("poison", "discarded"): 1,
    }
    # "undone" runs took back what they mentioned: only the "mentioned" ones count
    assert [(e["key"], e["mentions"]) for e in view["entities"]] == [
        (f"{t}/{name}", n) for t, name in sorted(MENTIONS, key=lambda m: m[1])
    ]


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Projector], asyncio.Event]]:
    """Start ``Projector.run`` in the background; stopped (and awaited) after the test."""
    tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(projector: Projector) -> asyncio.Event:
        stop = asyncio.Event()
        tasks.append((stop, asyncio.create_task(projector.run(stop))))
        return stop

    yield start
    for stop, task in tasks:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_live_view_equals_the_rebuilt_one(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str, running: Any
) -> None:
    lives, pairs = scenario()
    recording = RecordingViews(views)
    store = OnlyWorkspace(redis_store, workspace)
    projector = Projector(store, recording, batch_size=7, block_ms=50, rescan_s=0.02)  # type: ignore[arg-type]
    running(projector)

    # appended while the projector follows the log, so it sees them in small batches
    for start in range(0, len(pairs), 11):
        await append_all(redis_store, workspace, pairs[start : start + 11])
        await asyncio.sleep(0.001)
    head = await redis_store.head(workspace)
    assert await views.wait_for(workspace, head, timeout_s=20)
    live = await snapshot(views, workspace)

    result = await projector.rebuild(workspace, batch_size=1000)
    rebuilt = await snapshot(views, workspace)

    assert result.events == head == len(pairs)
    assert max(recording.batches[:-1]) <= 7
    assert len(recording.batches) > head // 7
    assert rebuilt == live
    expect_scenario(live, lives)
    assert await views.checkpoint(workspace) == head


@pytest.mark.parametrize("store_kind", ["redis", "memory"])
async def test_catch_up_project_once_and_lag(
    store_kind: str, redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    store: EventStore = redis_store if store_kind == "redis" else MemoryEventStore()
    lives, pairs = scenario(runs_per_kind=2)
    head = await append_all(store, workspace, pairs)
    projector = Projector(store, views, batch_size=10)

    assert await projector.lag(workspace) == head
    assert await projector.project_once(workspace) == 10
    assert await projector.lag(workspace) == head - 10
    assert await projector.catch_up(workspace) == head - 10
    assert await projector.lag(workspace) == 0
    assert await projector.catch_up(workspace) == 0
    expect_scenario(await snapshot(views, workspace), lives)


async def test_failed_writes_are_retried_never_skipped_nor_doubled(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str, running: Any
) -> None:
    lives, pairs = scenario(runs_per_kind=3)
    head = await append_all(redis_store, workspace, pairs)
    flaky = RecordingViews(views, fail=lambda n: {2: "before", 4: "after", 5: "after"}.get(n))
    store = OnlyWorkspace(redis_store, workspace)
    running(Projector(store, flaky, batch_size=5, block_ms=50, rescan_s=0.02))  # type: ignore[arg-type]

    assert await views.wait_for(workspace, head, timeout_s=20)

    assert flaky.failures == 3
    expect_scenario(await snapshot(views, workspace), lives)


async def test_two_projectors_on_one_workspace_apply_each_batch_once(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    lives, pairs = scenario(runs_per_kind=4)
    head = await append_all(redis_store, workspace, pairs)
    one, two = (
        Projector(redis_store, views, batch_size=3),
        Projector(redis_store, views, batch_size=4),
    )

    await asyncio.gather(one.catch_up(workspace), two.catch_up(workspace), one.catch_up(workspace))

    assert await views.checkpoint(workspace) == head
    expect_scenario(await snapshot(views, workspace), lives)


async def test_a_malformed_event_does_not_stall_the_view(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    await redis_store.append(workspace, "run-bad", [raw(RunSubmitted.topic, {"stages": 3})])
    lives, pairs = scenario(runs_per_kind=1)
    head = await append_all(redis_store, workspace, pairs)

    await Projector(redis_store, views).catch_up(workspace)

    assert await views.checkpoint(workspace) == head
    assert await views.get_run(workspace, "bad") is None
    expect_scenario(await snapshot(views, workspace), lives)


@pytest.mark.parametrize("store_kind", ["redis", "memory"])
async def test_run_finds_a_new_workspace_and_follows_it_closely(
    store_kind: str,
    redis_store: RedisEventStore,
    views: FalkorDBViews,
    workspace: str,
    running: Any,
) -> None:
    store: EventStore = redis_store if store_kind == "redis" else MemoryEventStore()
    projector = Projector(OnlyWorkspace(store, workspace), views, block_ms=500, rescan_s=0.02)  # type: ignore[arg-type]
    running(projector)
    await asyncio.sleep(0.05)  # the projector is idle, blocked on nothing it knows yet

    life = lifecycle("r1", "completed", Clock())
    first = await store.append(workspace, life.stream, life.events[:1])
    assert await views.wait_for(workspace, first.position, timeout_s=5)

    # each append is visible long before the idle read's block_ms would have run out
    loop = asyncio.get_running_loop()
    waits = []
    for event in life.events[1:]:
        started = loop.time()
        result = await store.append(workspace, life.stream, [event])
        assert await views.wait_for(workspace, result.position, timeout_s=5)
        waits.append(loop.time() - started)
    assert sorted(waits)[len(waits) // 2] < 0.25
    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert run["status"] == "completed"


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [next_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.05
    assert delays == sorted(delays)
    assert delays[-1] == 5.0
