"""The ontology on the real embedded server: seeding, discovery, promotion, undo, two reactors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import wait_terminal

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.operations import RunOperations
from stageline.actors.pipeline import MEMORY_INGEST, PipelineCatalog
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events.envelope import NewEvent
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.events.redis_store import RedisEventStore
from stageline.ontology.model import Ontology, Rules, pattern_id
from stageline.ontology.reactor import OntologyReactor
from stageline.ontology.seed import seed_events
from stageline.ontology.store import OntologyStore

SAMPLES = [
    json.loads(line)
    for line in resources.files("stageline.data").joinpath("samples.jsonl").read_text().splitlines()
]
CATALOG = PipelineCatalog([MEMORY_INGEST])
RULES = Rules(promote_after_runs=2, confirm_after_mentions=3)
VESPUCCI = pattern_id("Vespucci Labs", "organization")
ORBITAL = pattern_id("Orbital Gateway", "product")


class Rig:
    def __init__(self, store: RedisEventStore, client: aioredis.Redis, workspace: str) -> None:
        self.store, self.client, self.workspace = store, client, workspace
        self.ontology = OntologyStore(store, refresh_s=0.05)
        self.actors = default_actors(self.ontology.view)
        bus = CommandBus(client)
        self.submitter = Submitter(store, CATALOG, bus)
        self.operations = RunOperations(store, CATALOG, self.actors, bus)

    async def ingest(self, items: list[dict[str, Any]]) -> list[str]:
        runs = [
            (await self.submitter.submit(self.workspace, "memory-ingest", item)).run_id
            for item in items
        ]
        assert set((await wait_terminal(self.store, self.workspace, runs)).values()) == {
            "RunCompleted"
        }
        return runs

    async def settle(self, *reactors: OntologyReactor) -> Ontology:
        """Let the reactors reach the log's head, then fold the ontology stream afresh."""
        async with asyncio.timeout(20):
            while True:
                head = await self.store.head(self.workspace)
                marks = [await r.checkpoint(self.workspace) for r in reactors]
                if all(m >= head for m in marks) and head == await self.store.head(self.workspace):
                    break
                await asyncio.sleep(0.05)
        return Ontology.of(await self.store.read_stream(self.workspace, ONTOLOGY_STREAM))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield c
    await c.aclose()


@pytest.fixture
async def rig(redis_store: RedisEventStore, client: aioredis.Redis, workspace: str) -> Rig:
    return Rig(redis_store, client, workspace)


@pytest.fixture
async def worker(rig: Rig, redis_url: str) -> AsyncIterator[Worker]:
    w = Worker(
        rig.store, redis_url, CATALOG, rig.actors, WorkerConfig(poll_ms=20, consumer="w-onto")
    )
    await w.start()
    yield w
    await w.stop()


async def running(*reactors: OntologyReactor) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
    stop = asyncio.Event()
    return stop, [asyncio.create_task(r.run(stop)) for r in reactors]


async def stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.gather(*tasks)


def reactor(rig: Rig) -> OntologyReactor:
    return OntologyReactor(rig.store, rig.client, RULES, rescan_s=0.05)


async def test_a_new_workspace_is_seeded_once(rig: Rig) -> None:
    await asyncio.gather(*(OntologyStore(rig.store).current(rig.workspace) for _ in range(4)))
    events = await rig.store.read_stream(rig.workspace, ONTOLOGY_STREAM)
    assert len(events) == len(seed_events())
    assert {e.data.get("source", e.data.get("status")) for e in events} == {"seed"}


async def test_samples_discover_promote_and_undo_demotes_only_what_the_run_alone_promoted(
    rig: Rig, worker: Worker
) -> None:
    r = reactor(rig)
    stop, tasks = await running(r)
    try:
        runs = await rig.ingest(SAMPLES)
        state = await rig.settle(r)
        discovered = {p.name: p.source for p in state.active() if p.source != "seed"}
        assert discovered == {
            "MySQL": "discovered",
            "Cypher": "discovered",
            "PyCon US": "discovered",
            "Vespucci Labs": "promoted",  # m-024 and m-033
            "Halvorsen Analytics": "promoted",  # m-027 and m-033
            "Orbital Gateway": "promoted",  # m-035 and m-038
        }
        assert {t.name: t.status for t in state.types.values() if t.status != "seed"} == {
            "event": "provisional",
            "concept": "provisional",
        }
        m033 = runs[[s["id"] for s in SAMPLES].index("m-033")]
        await rig.operations.undo(rig.workspace, m033)
        state = await rig.settle(r)
        assert state.patterns[VESPUCCI].source == "discovered"  # m-033 had promoted it alone
        assert state.patterns[VESPUCCI].runs() == 1
        assert state.patterns[ORBITAL].source == "promoted"  # untouched by m-033
        # a second pass over the same items discovers nothing new, and promotes by matches
        added_before = _count(await _stream(rig), "PatternAdded")
        again = await rig.ingest(SAMPLES)
        state = await rig.settle(r)
        assert _count(await _stream(rig), "PatternAdded") == added_before
        proposals = [
            e
            for run in again
            for e in await rig.store.read_stream(rig.workspace, f"run-{run}")
            if e.type == "PatternProposed"
        ]
        assert proposals == []
        assert {p.source for p in state.active() if p.source != "seed"} == {"promoted"}
        assert state.types["event"].status == "provisional"  # 2 mentions < 3
    finally:
        await stopped(stop, tasks)


async def test_a_workspace_that_never_uses_the_ontology_is_given_none(rig: Rig) -> None:
    await rig.store.append(rig.workspace, "orders-1", [NewEvent(type="OrderPlaced", data={})])
    r = reactor(rig)
    stop, tasks = await running(r)
    try:
        state = await rig.settle(r)
    finally:
        await stopped(stop, tasks)
    assert state.version == -1
    assert await _stream(rig) == []


async def test_two_reactors_at_once_decide_everything_once(rig: Rig, worker: Worker) -> None:
    first, second = reactor(rig), reactor(rig)
    stop, tasks = await running(first, second)
    try:
        await rig.ingest(SAMPLES[20:40])
        await rig.settle(first, second)
    finally:
        await stopped(stop, tasks)
    events = await _stream(rig)
    sightings = Counter(e.data["evidence"] for e in events if e.type == "PatternSighted")
    assert sightings and set(sightings.values()) == {1}
    promoted = Counter(e.data["pattern_id"] for e in events if e.type == "PatternPromoted")
    assert set(promoted.values()) == {1}
    added = Counter(e.data["pattern_id"] for e in events if e.type == "PatternAdded")
    assert set(added.values()) == {1}


async def test_a_restarted_reactor_appends_nothing_for_what_it_handled(
    rig: Rig, worker: Worker
) -> None:
    r = reactor(rig)
    stop, tasks = await running(r)
    try:
        await rig.ingest(SAMPLES[30:40])
        await rig.settle(r)
    finally:
        await stopped(stop, tasks)
    before = len(await _stream(rig))
    await rig.client.delete(f"stageline:{{{rig.workspace}}}:reactor:ontology")  # lost checkpoint
    again = reactor(rig)
    stop, tasks = await running(again)
    try:
        await rig.settle(again)
    finally:
        await stopped(stop, tasks)
    assert len(await _stream(rig)) == before


async def _stream(rig: Rig) -> list[Any]:
    return await rig.store.read_stream(rig.workspace, ONTOLOGY_STREAM)


def _count(events: list[Any], topic: str) -> int:
    return sum(1 for e in events if e.type == topic)


class CountingReads:
    """The store, counting the reads of the log that brought events."""

    def __init__(self, store: RedisEventStore) -> None:
        self.store, self.reads = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def tail(self, after: Any, **kwargs: Any) -> Any:
        batches = await self.store.tail(after, **kwargs)
        self.reads += bool(batches)
        return batches


async def test_a_busy_log_is_read_a_few_times_a_second_not_once_per_append(rig: Rig) -> None:
    store = CountingReads(rig.store)
    r = OntologyReactor(store, rig.client, RULES, rescan_s=0.05, pause_s=0.2)  # type: ignore[arg-type]
    stop, tasks = await running(r)
    try:
        await rig.store.append(rig.workspace, "other", [NewEvent(type="Noted", data={})])
        await rig.settle(r)
        reads = store.reads
        for i in range(30):  # one append every ~10 ms
            await rig.store.append(rig.workspace, "other", [NewEvent(type="Noted", data={"i": i})])
            await asyncio.sleep(0.01)
        await rig.settle(r)
        # ~0.3-0.5 s of appends, a read at most every 0.2 s; one read per append without the pause
        assert 1 <= store.reads - reads <= 5
    finally:
        await stopped(stop, tasks)
