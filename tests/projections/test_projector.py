"""The projector over real stores and the real FalkorDB views: live, catching up, rebuilding.

Each projection has its own checkpoint: these tests also check that one can
fall behind, catch up or be rebuilt while the others are left alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from projection_helpers import (
    KINDS,
    MENTIONS,
    VIEWS,
    Clock,
    Lifecycle,
    interleave,
    lifecycle,
    poison,
    raw,
    snapshot,
    view_of,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from stageline.actors.configs import PipelineDefined
from stageline.actors.events import RunSubmitted
from stageline.actors.pipeline import Pipeline, StageSpec
from stageline.errors import InvalidArgument, ViewOfNewerVersion
from stageline.events import AppendRequest, EventStore, NewEvent, new_event
from stageline.events.keys import graph_name, log_key, pipeline_stream
from stageline.events.memory_store import MemoryEventStore
from stageline.events.redis_store import RedisEventStore
from stageline.projections import (
    ENTITIES,
    RUN_STATUS,
    FalkorDBViews,
    Projection,
    Projector,
    RunStatus,
    Write,
)
from stageline.projections.changes import RunStatusChanges
from stageline.projections.fold_pool import Folded, FoldPool
from stageline.projections.projector import MAX_WRITING, POOLED_MIN_BATCHES, next_delay

NAMES = [p.name for p in VIEWS]


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
    """The store, showing ``run`` only this test's workspaces (the server holds others')."""

    def __init__(self, store: EventStore, *workspaces: str) -> None:
        self._store, self._workspaces = store, set(workspaces)

    async def workspaces(self) -> list[str]:
        return [ws for ws in await self._store.workspaces() if ws in self._workspaces]

    async def tail(self, after: dict[str, int], **options: Any) -> dict[str, Any]:
        got = await self._store.tail(after, **options)
        return {ws: events for ws, events in got.items() if ws in self._workspaces}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class RecordingViews:
    """The real views, noting every write and failing the batches ``fail`` picks.

    ``fail(n)`` for the n-th batch of writes returns None (write normally), "before"
    (raise without writing) or "after" (write, then raise as if the reply were lost).
    """

    def __init__(self, views: FalkorDBViews, fail: Callable[[int], str | None] = lambda n: None):
        self.views, self.fail = views, fail
        self.batches: list[int] = []
        """Per batch of writes sent, the most events one of them folded."""
        self.writes: list[tuple[str, int, int]] = []
        """Every write sent: (projection, expected checkpoint, new checkpoint)."""
        self.applied: list[tuple[str, int, int]] = []
        """The writes that applied."""
        self.folded: list[int] = []
        """Per write that applied, how many log events its changes folded."""
        self.failures = 0

    async def apply_all(self, workspace: str, writes: Sequence[Write]) -> list[bool]:
        self.batches.append(max(w.changes.events for w in writes))
        sent = [(w.projection.name, w.expected, w.changes.position) for w in writes]
        self.writes += sent
        how = self.fail(len(self.batches))
        if how == "before":
            self.failures += 1
            raise ConnectionError("FalkorDB went away")
        applied = await self.views.apply_all(workspace, writes)
        self.applied += [w for w, ok in zip(sent, applied, strict=True) if ok]
        self.folded += [w.changes.events for w, ok in zip(writes, applied, strict=True) if ok]
        if how == "after":
            self.failures += 1
            raise ConnectionError("reply lost")
        return applied

    async def checkpoints(self, workspace: str, names: Iterable[str]) -> dict[str, int]:
        return await self.views.checkpoints(workspace, names)

    async def drop(self, workspace: str, projection: Projection[Any]) -> None:
        await self.views.drop(workspace, projection)

    async def drop_outdated(self, workspace: str, projections: Iterable[Projection[Any]]) -> None:
        await self.views.drop_outdated(workspace, projections)

    def written(self) -> set[str]:
        """The projections any applied write went to."""
        return {name for name, _, _ in self.applied}

    def exact(self) -> bool:
        """Every applied write folded exactly the log events after its expected checkpoint.

        (The log's positions are consecutive: none skipped, none folded twice.)
        """
        return all(
            n == position - expected
            for (_, expected, position), n in zip(self.applied, self.folded, strict=True)
        )

    def steps(self, name: str) -> list[tuple[int, int]]:
        """The (expected, new) checkpoints of the projection's applied writes, in order."""
        return [(e, p) for n, e, p in self.applied if n == name]


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
    config = Pipeline(name="mine", stages=(StageSpec(name="n", actor="normalize"),))
    pairs.insert(
        len(pairs) // 2, (pipeline_stream("mine"), new_event(PipelineDefined.of(config, 1)))
    )
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
    assert [(p["name"], p["stages"]) for p in view["pipelines"]] == [("mine", ["n"])]


async def checkpoints(views: FalkorDBViews, workspace: str) -> dict[str, int]:
    return await views.checkpoints(workspace, NAMES)


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


async def test_the_live_views_equal_the_rebuilt_ones(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    lives, pairs = scenario()
    recording = RecordingViews(views)
    store = OnlyWorkspace(redis_store, workspace)
    projector = Projector(store, recording, batch_size=7, block_ms=50, rescan_s=0.02)  # type: ignore[arg-type]
    stop = asyncio.Event()
    live_projector = asyncio.create_task(projector.run(stop))
    try:
        # appended while the projector follows the log, so it sees them in small batches
        for start in range(0, len(pairs), 11):
            await append_all(redis_store, workspace, pairs[start : start + 11])
            await asyncio.sleep(0.001)
        head = await redis_store.head(workspace)
        for name in NAMES:
            assert await views.wait_for(workspace, head, timeout_s=20, projection=name)
        live = await snapshot(views, workspace)
    finally:
        # stopped before the rebuilds: one that finds a view dropped replays it too (a
        # catch-up ending just then reloads the checkpoints), and the counts below would
        # then be shared between the two
        stop.set()
        await asyncio.wait_for(live_projector, 5)
    assert max(recording.batches[:-1]) <= 7
    assert len(recording.batches) > head // 7
    expect_scenario(live, lives)

    assert head == len(pairs)
    rebuilder = Projector(redis_store, views, batch_size=1000)
    for name in NAMES:
        result = await rebuilder.rebuild(workspace, name)
        assert (result.projection, result.events) == (name, head)
    results = await rebuilder.rebuild_all(workspace, batch_size=5)

    assert await snapshot(views, workspace) == live
    assert [r.projection for r in results] == [p.name for p in rebuilder.projections]
    assert {r.events for r in results} == {head}
    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)


@pytest.mark.parametrize("pooled", [False, True], ids=["in-process", "pooled"])
@pytest.mark.parametrize("rebuilt", NAMES)
async def test_rebuilding_one_projection_leaves_the_others_alone(
    redis_store: RedisEventStore,
    views: FalkorDBViews,
    own_url: str,
    workspace: str,
    rebuilt: str,
    pooled: bool,
) -> None:
    lives, pairs = scenario(runs_per_kind=2)
    head = await append_all(redis_store, workspace, pairs)
    assert head >= POOLED_MIN_BATCHES * 9
    await Projector(redis_store, views, batch_size=10).catch_up(workspace)
    live = {name: await view_of(views, workspace, name) for name in NAMES}
    others = [name for name in NAMES if name != rebuilt]
    recording = RecordingViews(views)
    pool = FoldPool(own_url, 2) if pooled else None
    rebuilder = Projector(redis_store, recording, batch_size=9, fold_pool=pool)  # type: ignore[arg-type]
    # the rebuild's first write, seen half-way: the drop emptied the view and its checkpoint
    seen: dict[str, Any] = {}

    async def first_write(workspace: str, writes: Sequence[Write]) -> list[bool]:
        if not seen:
            seen["view"] = await view_of(views, workspace, rebuilt)
            seen["checkpoints"] = await checkpoints(views, workspace)
            seen["folded elsewhere"] = isinstance(writes[0].changes, Folded)
        return await RecordingViews.apply_all(recording, workspace, writes)

    recording.apply_all = first_write  # type: ignore[method-assign]

    reports: list[tuple[int, int]] = []
    result = await rebuilder.rebuild(
        workspace, rebuilt, batch_size=9, progress=lambda *report: reports.append(report)
    )

    assert result.events == head
    # where the rebuild stands: from 0, after each batch of 9, up to the head
    assert reports == [(min(n, head), head) for n in range(0, head + 9, 9)]
    assert recording.written() == {rebuilt}
    assert recording.exact()
    assert seen["folded elsewhere"] == pooled
    assert seen["view"] != live[rebuilt]
    assert seen["checkpoints"] == {name: head for name in others}
    for name in NAMES:
        assert await view_of(views, workspace, name) == live[name]
    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)
    expect_scenario(await snapshot(views, workspace), lives)


async def test_projections_behind_catch_up_without_rewriting_the_others(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    lives, pairs = scenario(runs_per_kind=2)
    head = await append_all(redis_store, workspace, pairs)
    # run_status is at the head, entities part of the way, pipelines never started
    runs_only = Projector(redis_store, views, projections=(RUN_STATUS,), batch_size=10)
    assert await runs_only.catch_up(workspace) == head
    entities_only = Projector(redis_store, views, projections=(ENTITIES,), batch_size=13)
    assert await entities_only.project_once(workspace) == 13
    assert await checkpoints(views, workspace) == {"run_status": head, "entities": 13}
    runs_view = await view_of(views, workspace, "run_status")

    recording = RecordingViews(views)
    projector = Projector(redis_store, recording, projections=VIEWS, batch_size=10)  # type: ignore[arg-type]
    assert await projector.lag(workspace) == head
    assert await projector.lag(workspace, "run_status") == 0
    assert await projector.lag(workspace, "entities") == head - 13
    assert await projector.catch_up(workspace) == head

    assert recording.written() == {"entities", "pipelines"}
    assert recording.exact()
    ends = [min(start + 10, head) for start in range(0, head, 10)]
    assert recording.steps("pipelines") == list(zip([0, *ends[:-1]], ends, strict=True))
    # entities starts from its own checkpoint, inside the reads' second batch
    assert recording.steps("entities") == list(zip([13, *ends[1:-1]], ends[1:], strict=True))
    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)
    assert await view_of(views, workspace, "run_status") == runs_view
    expect_scenario(await snapshot(views, workspace), lives)
    assert await projector.lag(workspace) == 0


async def test_a_follower_finds_a_projection_moved_back_and_replays_only_it(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str, running: Any
) -> None:
    lives, pairs = scenario(runs_per_kind=2)
    head = await append_all(redis_store, workspace, pairs[:-1])
    recording = RecordingViews(views)
    store = OnlyWorkspace(redis_store, workspace)
    projector = Projector(store, recording, projections=VIEWS, batch_size=50, block_ms=50)  # type: ignore[arg-type]
    running(projector)
    for name in NAMES:
        assert await views.wait_for(workspace, head, timeout_s=20, projection=name)

    # behind the follower's back, the entities view is dropped (as a rebuild elsewhere does)
    await views.drop(workspace, ENTITIES)
    recording.applied.clear()
    recording.folded.clear()
    head = await append_all(redis_store, workspace, pairs[-1:])
    for name in NAMES:
        assert await views.wait_for(workspace, head, timeout_s=20, projection=name)

    # the last event went to every projection; entities found its checkpoint gone and
    # replayed the whole log from 0, the others got nothing twice
    assert sorted(w for w in recording.applied if w[0] != "entities") == [
        ("pipelines", head - 1, head),
        ("run_status", head - 1, head),
    ]
    replayed = recording.steps("entities")
    assert replayed[0][0] == 0 and replayed[-1][1] == head
    assert [e for e, _ in replayed] == [0, *(p for _, p in replayed[:-1])]
    assert recording.exact()
    expect_scenario(await snapshot(views, workspace), lives)


async def test_a_pooled_rebuild_folds_a_log_that_skips_positions_once(
    redis_store: RedisEventStore, views: FalkorDBViews, own_url: str, workspace: str
) -> None:
    _, pairs = scenario(runs_per_kind=2)
    head = await append_all(redis_store, workspace, pairs)
    # entries gone from the log (no append leaves a hole, but a hand may): each range a
    # worker reads then holds fewer events than positions, and must not read on into the next
    deleted = [f"0-{p}".encode() for p in range(3, head, 7)]
    assert await redis_store.client.xdel(log_key(workspace), *deleted) == len(deleted)
    await Projector(redis_store, views, batch_size=5).catch_up(workspace)
    live = await snapshot(views, workspace)

    recording = RecordingViews(views)
    pooled = Projector(redis_store, recording, fold_pool=FoldPool(own_url, 2))  # type: ignore[arg-type]
    results = await pooled.rebuild_all(workspace, batch_size=5)

    assert recording.applied == recording.writes  # each range's write expects the one before
    assert await snapshot(views, workspace) == live
    assert {r.events for r in results} == {head - len(deleted)}
    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)


async def test_a_pooled_rebuild_refused_by_another_writer_reads_on_from_its_checkpoint(
    redis_store: RedisEventStore, views: FalkorDBViews, own_url: str, workspace: str
) -> None:
    _, pairs = scenario(runs_per_kind=2)
    head = await append_all(redis_store, workspace, pairs)
    await Projector(redis_store, views, batch_size=10).catch_up(workspace)
    live = await snapshot(views, workspace)
    other = Projector(redis_store, views, projections=(RUN_STATUS,), batch_size=4)
    recording = RecordingViews(views)

    async def raced(workspace: str, writes: Sequence[Write]) -> list[bool]:
        if len(recording.batches) == 2:  # before the rebuild's third write, another lands
            assert await other.project_once(workspace) == 4
        return await RecordingViews.apply_all(recording, workspace, writes)

    recording.apply_all = raced  # type: ignore[method-assign]
    rebuilder = Projector(redis_store, recording, fold_pool=FoldPool(own_url, 2))  # type: ignore[arg-type]
    result = await rebuilder.rebuild(workspace, RUN_STATUS.name, batch_size=6)

    steps = recording.steps(RUN_STATUS.name)
    assert steps[:3] == [(0, 6), (6, 12), (16, 22)]
    assert ("run_status", 12, 18) in recording.writes  # the write refused
    assert steps[-1][1] == head and recording.exact()
    assert result.events == head - 4
    assert await snapshot(views, workspace) == live
    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)


async def test_a_pooled_rebuild_whose_workers_cannot_read_the_log_fails_and_the_next_starts_afresh(
    redis_store: RedisEventStore,
    views: FalkorDBViews,
    own_url: str,
    tmp_path: Any,
    workspace: str,
) -> None:
    _, pairs = scenario(runs_per_kind=1)
    await append_all(redis_store, workspace, pairs)
    # the workers' store does not answer; the rebuilding process's does
    pool = FoldPool(f"unix://{tmp_path}/nothing.sock", 2)
    rebuilder = Projector(redis_store, views, projections=(RUN_STATUS,), fold_pool=pool)

    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(rebuilder.rebuild(workspace, RUN_STATUS.name, batch_size=5), 60)

    # the pool was started for that rebuild only and stopped with it; the next starts anew
    pool.store_url = own_url
    await rebuilder.rebuild(workspace, RUN_STATUS.name, batch_size=5)
    assert await views.checkpoint(workspace) == await redis_store.head(workspace)


async def test_a_projection_no_worker_can_be_handed_is_rebuilt_in_process(
    redis_store: RedisEventStore, views: FalkorDBViews, own_url: str, workspace: str
) -> None:
    _, pairs = scenario(runs_per_kind=2)
    await append_all(redis_store, workspace, pairs)
    await Projector(redis_store, views, batch_size=10).catch_up(workspace)
    live = await view_of(views, workspace, RUN_STATUS.name)
    own = Projection(RUN_STATUS.name, lambda events: RUN_STATUS.fold(events), RUN_STATUS.writer)
    recording = RecordingViews(views)
    kinds: set[type] = set()

    async def noted(workspace: str, writes: Sequence[Write]) -> list[bool]:
        kinds.update(type(w.changes) for w in writes)
        return await RecordingViews.apply_all(recording, workspace, writes)

    recording.apply_all = noted  # type: ignore[method-assign]
    pool = FoldPool(own_url, 2)
    rebuilder = Projector(redis_store, recording, projections=(own,), fold_pool=pool)  # type: ignore[arg-type]

    await rebuilder.rebuild(workspace, own.name, batch_size=5)

    assert not pool.can_fold(own) and pool.can_fold(RUN_STATUS)
    assert kinds == {RunStatusChanges}
    assert recording.exact()
    assert await view_of(views, workspace, RUN_STATUS.name) == live


async def test_an_unknown_projection_is_refused_with_the_names_it_could_be(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    projector = Projector(redis_store, views, projections=VIEWS)
    with pytest.raises(InvalidArgument, match="projections: run_status, entities, pipelines"):
        await projector.rebuild(workspace, "nope")
    with pytest.raises(InvalidArgument):
        await projector.lag(workspace, "nope")


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
    for name in NAMES:
        assert await projector.lag(workspace, name) == head - 10
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

    for name in NAMES:
        assert await views.wait_for(workspace, head, timeout_s=20, projection=name)

    assert flaky.failures == 3
    expect_scenario(await snapshot(views, workspace), lives)
    # every projection's writes follow on from each other: none skipped, none twice
    assert flaky.exact()
    for name in NAMES:
        steps = flaky.steps(name)
        assert [e for e, _ in steps] == [0, *(p for _, p in steps[:-1])]


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

    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)
    expect_scenario(await snapshot(views, workspace), lives)


async def test_a_malformed_event_does_not_stall_the_view(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    await redis_store.append(workspace, "run-bad", [raw(RunSubmitted.topic, {"stages": 3})])
    lives, pairs = scenario(runs_per_kind=1)
    head = await append_all(redis_store, workspace, pairs)

    await Projector(redis_store, views).catch_up(workspace)

    assert await checkpoints(views, workspace) == dict.fromkeys(NAMES, head)
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


@pytest.mark.parametrize("store_kind", ["redis", "memory"])
async def test_run_follows_a_new_workspace_from_its_first_event_not_its_next_scan(
    store_kind: str,
    redis_store: RedisEventStore,
    views: FalkorDBViews,
    workspace: str,
    running: Any,
) -> None:
    store: EventStore = redis_store if store_kind == "redis" else MemoryEventStore()
    old, new = f"{workspace}a", f"{workspace}b"
    life = lifecycle("r1", "completed", Clock())
    # scans only when it starts, finding nothing: only its blocking read can bring them
    projector = Projector(OnlyWorkspace(store, old, new), views, block_ms=2000, rescan_s=600)  # type: ignore[arg-type]
    running(projector)
    await asyncio.sleep(0.2)
    first = await store.append(old, life.stream, life.events[:1])  # none followed yet
    assert await views.wait_for(old, first.position, timeout_s=5)

    appended = await store.append(new, life.stream, life.events)

    assert await views.wait_for(new, appended.position, timeout_s=5)
    run = await views.get_run(new, "r1")
    assert run is not None and run["status"] == "completed"


async def test_run_follows_many_workspaces_on_a_few_connections(
    own_url: str, views: FalkorDBViews, workspace: str, running: Any
) -> None:
    # one blocking read per workspace would need 60 connections; the pool has 4
    store = RedisEventStore(aioredis.Redis.from_url(own_url, max_connections=4))
    names = [f"{workspace}-{n}" for n in range(60)]
    counting = CountingViews(views)
    try:
        projector = Projector(OnlyWorkspace(store, *names), counting, block_ms=200, rescan_s=0.05)  # type: ignore[arg-type]
        running(projector)
        lives = [lifecycle(f"r{n}", "completed", Clock()) for n in range(len(names))]
        heads = {}
        for ws, life in zip(names, lives, strict=True):
            heads[ws] = (await store.append(ws, life.stream, life.events)).position
        await asyncio.sleep(0.3)  # every workspace is followed and idle: reads block
        mores = [lifecycle(f"{life.run_id}-more", "completed", Clock()) for life in lives]
        requests = [
            AppendRequest(ws, m.stream, m.events) for ws, m in zip(names, mores, strict=True)
        ]
        for ws, result in zip(names, await store.append_batch(requests), strict=True):
            assert not isinstance(result, Exception)  # all at once: the reads wake up on them
            heads[ws] = result.position
        for ws, head in heads.items():
            assert await views.wait_for(ws, head, timeout_s=20), ws
            run = await views.get_run(ws, f"{lives[names.index(ws)].run_id}-more")
            assert run is not None and run["status"] == "completed"
        assert 1 < counting.most <= MAX_WRITING  # side by side, and bounded
    finally:
        await store.close()


class CountingViews:
    """The real views, counting the most batches of writes in flight at once."""

    def __init__(self, views: FalkorDBViews) -> None:
        self.views, self.now, self.most = views, 0, 0

    async def apply_all(self, workspace: str, writes: Sequence[Write]) -> list[bool]:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self.views.apply_all(workspace, writes)
        finally:
            self.now -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.views, name)


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [next_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.05
    assert delays == sorted(delays)
    assert delays[-1] == 5.0


async def test_a_caught_up_view_an_older_version_wrote_is_rebuilt_when_the_projector_starts(
    redis_store: RedisEventStore, views: FalkorDBViews, workspace: str
) -> None:
    _, pairs = scenario(runs_per_kind=1)
    head = await append_all(redis_store, workspace, pairs)
    await Projector(redis_store, views, batch_size=10).catch_up(workspace)
    live = {name: await view_of(views, workspace, name) for name in NAMES}
    # as an earlier stageline left it, caught up: its checkpoint without a shape (and, in
    # 0.1, a node per stage: this one stands for them)
    graph = views.db.select_graph(graph_name(workspace))
    await graph.query("MATCH (c:Checkpoint {projection: 'run_status'}) SET c.shape = NULL")
    await graph.query("CREATE (:Stage {key: 'r/a', run_id: 'r', attempts: 1})")

    restarted = FalkorDBViews(views.db)  # a new process, with no event to project
    assert await Projector(redis_store, restarted, batch_size=10).catch_up(workspace) == head

    assert {name: await view_of(restarted, workspace, name) for name in NAMES} == live
    assert (await graph.ro_query("MATCH (n:Stage) RETURN count(n)")).result_set == [[0]]


async def test_a_projector_leaves_a_view_a_newer_version_took_over(
    redis_store: RedisEventStore,
    views: FalkorDBViews,
    workspace: str,
    running: Callable[[Projector], asyncio.Event],
) -> None:
    _, pairs = scenario(runs_per_kind=1)
    half = len(pairs) // 2
    reached = await append_all(redis_store, workspace, pairs[:half])
    store = OnlyWorkspace(redis_store, workspace)
    # batches larger than what is appended: the refused write is the projector's own,
    # not a catch-up's (which reloads the checkpoints anew)
    projector = Projector(store, views, batch_size=1000, block_ms=50, rescan_s=0.02)  # type: ignore[arg-type]
    with capture_logs() as logs:
        running(projector)
        for name in NAMES:
            assert await views.wait_for(workspace, reached, timeout_s=20, projection=name)
        # a newer stageline took the run-status view over (rebuilt it in its own shape)
        graph = views.db.select_graph(graph_name(workspace))
        newer = RUN_STATUS.writer.shape + 1
        await graph.query(
            f"MATCH (c:Checkpoint {{projection: 'run_status'}}) SET c.shape = {newer}"
        )
        before = await view_of(views, workspace, RUN_STATUS.name)

        await append_all(redis_store, workspace, pairs[half:])
        for _ in range(200):  # the refused write, then the shape read back
            if any("ViewOfNewerVersion" in str(e.get("error")) for e in logs):
                break
            await asyncio.sleep(0.05)

    failed = [e for e in logs if e["event"] == "projector.batch_failed"]
    assert failed and f"newer stageline (its shape {newer}" in failed[0]["error"]
    assert await views.checkpoint(workspace) == reached
    assert await view_of(views, workspace, RUN_STATUS.name) == before
    # and a catch-up says so, writing nothing
    with pytest.raises(ViewOfNewerVersion):
        await Projector(redis_store, FalkorDBViews(views.db)).catch_up(workspace)
    assert await views.checkpoint(workspace) == reached
