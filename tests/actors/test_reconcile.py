"""Runs left without a command in flight are re-driven, and nudging a healthy run is harmless."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import idle, transitions, wait_terminal

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.decide import RunState, fold_run
from stageline.actors.events import RunFailed, RunRetried, RunSubmitted, StageStarted
from stageline.actors.pipeline import MEMORY_INGEST, Pipeline, PipelineCatalog
from stageline.actors.reconcile import Reconciler, Sweep, nudge
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events import keys
from stageline.events.envelope import NO_STREAM, NewEvent, new_event
from stageline.events.redis_store import RedisEventStore
from stageline.settings import Settings
from stageline.stack import Stack


def submitted_state(version: int = 0) -> RunState:
    state = RunState(
        version=version, pipeline="memory-ingest", stage_names=MEMORY_INGEST.stage_names
    )
    state.item = {"text": "x"}
    return state


def test_nudge_targets_the_current_stage_at_a_stale_version() -> None:
    command = nudge("w", "r1", submitted_state(version=3), MEMORY_INGEST)
    assert command is not None
    assert (command.index, command.version, command.attempt) == (0, 2, 1)


def test_finished_runs_are_not_nudged() -> None:
    state = submitted_state()
    state.terminal = "RunCompleted"
    assert nudge("w", "r1", state, MEMORY_INGEST) is None


def test_a_sweep_lets_runs_be_until_they_change_or_stop_being_stale() -> None:
    sweep = Sweep()
    page = [("a", 1), ("b", 2)]
    assert not any(sweep.skips(run) for run in page)
    for run in page:  # neither could be moved
        sweep.skip(run)
    sweep.turn(page, limit=2)
    assert sweep.after == ("b", 2)  # a full page: the next goes on after it
    sweep.turn([], limit=2)
    assert sweep.after is None  # the end: the next sweep starts from the oldest
    assert not sweep.skips(("a", 5))  # a changed: looked at again
    assert sweep.skips(("b", 2))
    sweep.turn([("a", 5), ("b", 2)], limit=3)
    assert not sweep.skips(("a", 1))  # not seen in the last sweep: forgotten
    assert sweep.skips(("b", 2))


def test_a_sweep_nudges_a_run_left_as_it_was_again_after_1_2_4_sweeps_at_most_64() -> None:
    sweep = Sweep()
    run = ("a", 1)
    nudged_in = []
    for number in range(400):
        if not sweep.skips(run):
            nudged_in.append(number)
            sweep.nudged(run)
        sweep.turn([run], limit=2)  # one short page: a sweep a pass
    assert nudged_in[:8] == [0, 1, 3, 7, 15, 31, 63, 127]
    assert nudged_in[8:11] == [191, 255, 319]  # then every 64 sweeps
    assert not sweep.skips(("a", 2))  # changed (a new event): nudged as soon as it is stale


async def pipeline_of(workspace: str, state: RunState) -> Pipeline | None:
    return PipelineCatalog().get(workspace, state.pipeline or "", state.pipeline_version)


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[CommandBus]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield CommandBus(client)
    await client.aclose()


@pytest.fixture
async def worker(redis_store: RedisEventStore, redis_url: str) -> AsyncIterator[Worker]:
    w = Worker(
        redis_store,
        redis_url,
        PipelineCatalog(),
        default_actors(),
        WorkerConfig(poll_ms=20, consumer="w-rec"),
    )
    await w.start()
    yield w
    await w.stop()


def submitted(pipeline: str = "memory-ingest", at: datetime | None = None) -> NewEvent:
    """A run's ``RunSubmitted`` (of ``pipeline``, occurred ``at``)."""
    return new_event(
        RunSubmitted(
            pipeline=pipeline,
            pipeline_version=1,
            stages=MEMORY_INGEST.stage_names,
            input={"text": "x"},
        ),
        occurred_at=at,
    )


class CountingReads:
    """The store, counting the streams read through it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads = 0

    async def read_stream(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return await self.store.read_stream(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def submitted_only(
    store: RedisEventStore, bus: CommandBus, workspace: str, text: str
) -> tuple[str, Reconciler]:
    """A run with only its RunSubmitted, and a reconciler that always finds it stale."""
    run_id = str(uuid.uuid4())
    event = new_event(
        RunSubmitted(
            pipeline="memory-ingest",
            pipeline_version=1,
            stages=MEMORY_INGEST.stage_names,
            input={"text": text},
        )
    )
    await store.append(workspace, keys.run_stream(run_id), [event], NO_STREAM)

    async def stale(ws: str, idle_since_ms: int, limit: int, after: Any) -> list[tuple[str, int]]:
        return [(run_id, 0)]

    return run_id, Reconciler(store, bus, stale, pipeline_of, idle_seconds=0)


async def test_a_run_whose_first_command_was_lost_is_re_driven_to_completion(
    worker: Worker, bus: CommandBus, redis_store: RedisEventStore, workspace: str
) -> None:
    # the submit appended RunSubmitted, then died before publishing the first command
    run_id, reconciler = await submitted_only(redis_store, bus, workspace, "Bob in Paris")
    assert await reconciler.pass_once(workspace) == 1
    assert await wait_terminal(redis_store, workspace, [run_id]) == {run_id: "RunCompleted"}
    assert set((await transitions(redis_store, workspace, run_id)).values()) == {1}

    # nudging a finished run does nothing; nudging one mid-flight records nothing twice
    assert await reconciler.pass_once(workspace) == 0
    state = fold_run(await redis_store.read_stream(workspace, keys.run_stream(run_id)))
    assert state.terminal == "RunCompleted"


async def test_a_run_an_import_holds_is_let_be_until_an_event_is_appended_to_it(
    bus: CommandBus, redis_store: RedisEventStore, workspace: str
) -> None:
    run_id, reconciler = await submitted_only(redis_store, bus, workspace, "imported")
    stream = keys.run_stream(run_id)
    await redis_store.hold_streams(workspace, {stream: 2})  # an import has appended 1 of 2
    assert await reconciler.pass_once(workspace) == 0

    def afresh() -> Reconciler:  # one that has not let the run be already
        return Reconciler(redis_store, bus, reconciler.stale_runs, pipeline_of, idle_seconds=0)

    started = StageStarted(stage="normalize", index=0)
    await redis_store.append(workspace, stream, [new_event(started)], 0)  # the import's 2nd
    assert await afresh().pass_once(workspace) == 0

    # a user's operation appended to it (it failed, and was retried): driven again
    failed = RunFailed(stage="normalize", error_type="E", error="x", dead_letter="d")
    retried = RunRetried(stage="normalize", index=0, attempt=2)
    await redis_store.append(workspace, stream, [new_event(failed), new_event(retried)], 1)
    assert await afresh().pass_once(workspace) == 1

    # import --resume lets go of the hold
    run_id, reconciler = await submitted_only(redis_store, bus, workspace, "moved")
    await redis_store.hold_streams(workspace, {keys.run_stream(run_id): 1})
    await redis_store.release_streams(workspace, [keys.run_stream(run_id)])
    assert await reconciler.pass_once(workspace) == 1


async def test_nudging_a_healthy_run_records_nothing_twice(
    worker: Worker, bus: CommandBus, redis_store: RedisEventStore, workspace: str
) -> None:
    run_id, reconciler = await submitted_only(redis_store, bus, workspace, "Alice")
    for _ in range(5):  # a burst of nudges racing the run itself
        await reconciler.pass_once(workspace)
    await wait_terminal(redis_store, workspace, [run_id])
    for actor in ("normalize", "classify", "extract", "summarize"):
        await idle(bus.client, actor)
    assert set((await transitions(redis_store, workspace, run_id)).values()) == {1}


async def test_the_view_names_unfinished_runs_idle_since_a_time(
    redis_url: str, workspace: str
) -> None:
    stack = await Stack.open(Settings(redis_url=redis_url))
    try:
        finished = await stack.submitter.submit(workspace, "memory-ingest", {"text": "done"})
        stuck_id = str(uuid.uuid4())
        event = new_event(
            RunSubmitted(
                pipeline="memory-ingest",
                pipeline_version=1,
                stages=MEMORY_INGEST.stage_names,
                input={"text": "x"},
            )
        )
        await stack.store.append(workspace, keys.run_stream(stuck_id), [event], NO_STREAM)
        worker = stack.worker()
        await worker.start()
        try:
            await wait_terminal(stack.store, workspace, [finished.run_id])
            await stack.projector().catch_up(workspace)
            [(run_id, updated_at)] = await stack.views.stale_runs(workspace, 2**52)
            assert run_id == stuck_id and updated_at > 0
            assert await stack.views.stale_runs(workspace, 2**52, after=(run_id, updated_at)) == []
            assert await stack.views.stale_runs(workspace, 0) == []
            # the reconciler the stack builds drives the stuck run to the end
            reconciler = stack.reconciler()
            reconciler.idle_seconds = 0
            assert await reconciler.pass_once(workspace, now=2**40) == 1
            assert await wait_terminal(stack.store, workspace, [stuck_id]) == {
                stuck_id: "RunCompleted"
            }
        finally:
            await worker.stop()
    finally:
        await stack.close()


async def test_runs_no_nudge_can_move_neither_hide_newer_ones_nor_are_read_every_pass(
    redis_url: str, workspace: str
) -> None:
    stack = await Stack.open(Settings(redis_url=redis_url))
    try:
        # the oldest idle runs were reported by a system whose pipeline stageline does not
        # know: no event ever moves them, so the view lists them first on every pass
        old = datetime(2020, 1, 1, tzinfo=UTC)
        for n in range(3):
            event = submitted("elsewhere", old + timedelta(seconds=n))
            await stack.store.append(workspace, keys.run_stream(f"ext-{n}"), [event], NO_STREAM)
        stuck_id = str(uuid.uuid4())
        event = submitted(at=old + timedelta(days=1))
        await stack.store.append(workspace, keys.run_stream(stuck_id), [event], NO_STREAM)
        await stack.projector().catch_up(workspace)
        reconciler = stack.reconciler()
        reconciler.idle_seconds, reconciler.limit = 0, 3
        counting = CountingReads(stack.store)
        reconciler.store = counting
        worker = stack.worker()
        await worker.start()
        try:
            nudged = [await reconciler.pass_once(workspace, now=2**40) for _ in range(2)]
            assert sum(nudged) == 1
            assert await wait_terminal(stack.store, workspace, [stuck_id]) == {
                stuck_id: "RunCompleted"
            }
        finally:
            await worker.stop()
        await stack.projector().catch_up(workspace)
        # the runs it could not move are not read again until they change
        counting.reads = 0
        for _ in range(3):
            assert await reconciler.pass_once(workspace, now=2**40) == 0
        assert counting.reads == 0
        late = submitted("elsewhere", old + timedelta(days=2))
        await stack.store.append(workspace, keys.run_stream("ext-0"), [late], 0)
        await stack.projector().catch_up(workspace)
        for _ in range(2):
            await reconciler.pass_once(workspace, now=2**40)
        assert counting.reads == 1
    finally:
        await stack.close()


async def test_a_workspace_whose_pass_fails_does_not_hold_up_the_others(
    redis_store: RedisEventStore, bus: CommandBus, workspace: str
) -> None:
    stop = asyncio.Event()
    passed: list[str] = []

    async def stale(ws: str, *_: Any) -> list[Any]:
        if ws != workspace:
            raise ConnectionError("its view is away")
        passed.append(ws)
        stop.set()
        return []

    class Listing(CountingReads):
        async def workspaces(self) -> list[str]:
            return [f"{workspace}-broken", workspace]

    reconciler = Reconciler(Listing(redis_store), bus, stale, pipeline_of, idle_seconds=0)
    await asyncio.wait_for(reconciler.run(stop), 3)
    assert passed == [workspace]
