"""Pipeline configs: pure validation and folds, and the store-backed catalog on the real server."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from actor_helpers import transitions, wait_terminal

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.configs import PipelineDefined, PipelineDeleted, defined, fold_config
from stageline.actors.pipeline import (
    FLAKY,
    MEMORY_INGEST,
    Pipeline,
    PipelineCatalog,
    RetryPolicy,
    StageSpec,
    validate,
)
from stageline.actors.pipelines_store import PipelineConfigs
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.errors import Conflict, InvalidArgument, NotFound
from stageline.events import keys
from stageline.events.envelope import RecordedEvent, new_event
from stageline.events.redis_store import RedisEventStore

ACTORS = default_actors().names()
BUILTINS = ("memory-ingest", "flaky")


def stage(name: str, actor: str = "normalize", **retry: Any) -> StageSpec:
    return StageSpec(name=name, actor=actor, retry=RetryPolicy(**retry))


def pipeline(*stages: StageSpec, name: str = "custom", description: str = "") -> Pipeline:
    return Pipeline(name=name, description=description, stages=stages)


RETRYING = pipeline(
    stage("normalize"),
    StageSpec(
        name="flaky",
        actor="flaky",
        timeout_seconds=5,
        retry=RetryPolicy(max_retries=3, backoff_seconds=0.05, backoff_multiplier=1.5),
    ),
    stage("summarize", "summarize"),
    name="retrying",
    description="flaky in the middle, retried three times",
)


# -- validation (pure) --------------------------------------------------------------


def test_builtins_and_a_custom_pipeline_are_valid() -> None:
    for p in (MEMORY_INGEST, FLAKY, RETRYING):
        assert validate(p, ACTORS) is p
    fallback = pipeline(stage("a", fallback="c"), stage("b"), stage("c", fallback="skip"))
    assert validate(fallback, ACTORS) is fallback


INVALID: list[tuple[str, Pipeline, str]] = [
    ("no stages", pipeline(), "stages"),
    ("unknown actor", pipeline(stage("a", "teleport")), "stages[0].actor"),
    ("duplicate stage", pipeline(stage("a"), stage("b"), stage("a")), "stages[2].name"),
    ("negative retries", pipeline(stage("a", max_retries=-1)), "stages[0].retry.max_retries"),
    (
        "negative backoff",
        pipeline(stage("a", backoff_seconds=-0.1)),
        "stages[0].retry.backoff_seconds",
    ),
    (
        "infinite backoff",
        pipeline(stage("a", backoff_seconds=math.inf)),
        "stages[0].retry.backoff_seconds",
    ),
    (
        "multiplier below 1",
        pipeline(stage("a", backoff_multiplier=0.5)),
        "stages[0].retry.backoff_multiplier",
    ),
    (
        "nan multiplier",
        pipeline(stage("a", backoff_multiplier=math.nan)),
        "stages[0].retry.backoff_multiplier",
    ),
    (
        "negative cap",
        pipeline(stage("a", max_backoff_seconds=-1)),
        "stages[0].retry.max_backoff_seconds",
    ),
    ("unknown fallback", pipeline(stage("a", fallback="z")), "stages[0].retry.fallback"),
    (
        "earlier fallback",
        pipeline(stage("a"), stage("b", fallback="a")),
        "stages[1].retry.fallback",
    ),
    ("own fallback", pipeline(stage("a", fallback="a")), "stages[0].retry.fallback"),
    (
        "zero timeout",
        pipeline(StageSpec(name="a", actor="normalize", timeout_seconds=0)),
        "stages[0].timeout_seconds",
    ),
    ("bad stage name", pipeline(stage("Big Stage")), "stages[0].name"),
    ("stage named skip", pipeline(stage("skip")), "stages[0].name"),
    ("too many stages", pipeline(*(stage(f"s{i}") for i in range(101))), "stages"),
]


@pytest.mark.parametrize(("case", "bad", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_pipelines_name_the_offending_field(case: str, bad: Pipeline, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate(bad, ACTORS)
    assert raised.value.details["field"] == field


@pytest.mark.parametrize(
    "name", ["", "Upper", "-lead", "_lead", "has space", "dot.ted", "x" * 65, "ok\n", "é"]
)
def test_bad_pipeline_names_are_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate(pipeline(stage("a"), name=name), ACTORS)
    assert raised.value.details["field"] == "name"


@pytest.mark.parametrize("name", ["a", "0", "a-b_c", "x" * 64])
def test_good_pipeline_names_are_valid(name: str) -> None:
    validate(pipeline(stage("a"), name=name), ACTORS)


# -- events and the fold (pure) -----------------------------------------------------

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def recorded(payload: Any, version: int, name: str = "custom") -> RecordedEvent:
    event = new_event(payload)
    return RecordedEvent(
        event_id=event.event_id,
        type=event.type,
        schema_version=event.schema_version,
        stream=keys.pipeline_stream(name),
        version=version,
        position=10 + version,
        workspace="w",
        occurred_at=T0,
        recorded_at=T0,
        correlation_id=None,
        causation_id=None,
        data=msgspec.to_builtins(payload),
    )


def test_a_definition_round_trips_through_its_event() -> None:
    event = recorded(PipelineDefined.of(RETRYING, 1), 0, "retrying")
    assert defined(event, "retrying") == msgspec.structs.replace(RETRYING, version=1)


def test_a_definition_out_of_its_place_is_none() -> None:
    misplaced = recorded(PipelineDefined.of(RETRYING, 3), 0, "retrying")
    assert defined(misplaced, "retrying") is None
    other_name = recorded(PipelineDefined.of(RETRYING, 1), 0, "other")
    assert defined(other_name, "other") is None


def test_fold_versions_delete_and_recreate() -> None:
    one = pipeline(stage("a"))
    two = pipeline(stage("a"), stage("b"), description="two")
    events = [
        recorded(PipelineDefined.of(one, 1), 0),
        recorded(PipelineDefined.of(two, 2), 1),
        recorded(PipelineDeleted(name="custom", version=2), 2),
    ]
    state = fold_config("custom", events)
    assert not state.exists and state.deleted
    assert sorted(state.versions) == [1, 2]
    assert state.versions[2].pipeline.description == "two"
    assert state.stream_version == 2 and state.position == 12
    assert state.next_version == 4
    state = fold_config("custom", [*events, recorded(PipelineDefined.of(one, 4), 3)])
    assert state.exists and state.latest is not None
    assert state.latest.pipeline.version == 4
    assert sorted(state.versions) == [1, 2, 4]
    assert fold_config("custom", []).next_version == 1


# -- the store-backed catalog on the embedded server -------------------------------


class CountingSource:
    """A source that counts the reads the catalog asks it for."""

    def __init__(self, inner: PipelineConfigs) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, int | None]] = []

    async def definition(self, workspace: str, name: str, version: int | None) -> Pipeline | None:
        self.calls.append((workspace, name, version))
        return await self.inner.definition(workspace, name, version)


def configs_of(store: RedisEventStore) -> PipelineConfigs:
    return PipelineConfigs(store, default_actors().names, BUILTINS)


@pytest.fixture
def configs(redis_store: RedisEventStore) -> PipelineConfigs:
    return configs_of(redis_store)


async def test_create_update_delete_as_events(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    created = await configs.create(workspace, RETRYING, correlation_id="c-1")
    assert (created.name, created.version, created.changed) == ("retrying", 1, True)
    changed = msgspec.structs.replace(RETRYING, description="now documented")
    updated = await configs.update(workspace, changed, expected_version=1)
    assert (updated.version, updated.changed) == (2, True)
    again = await configs.update(workspace, changed)
    assert (again.version, again.changed, again.position) == (2, False, updated.position)
    deleted = await configs.delete(workspace, "retrying", reason="done")
    assert (deleted.version, deleted.changed) == (2, True)
    events = await redis_store.read_stream(workspace, keys.pipeline_stream("retrying"))
    assert [(e.type, e.data["version"]) for e in events] == [
        ("PipelineDefined", 1),
        ("PipelineDefined", 2),
        ("PipelineDeleted", 2),
    ]
    assert events[0].correlation_id == "c-1"
    assert events[2].data["reason"] == "done"
    assert deleted.position == events[2].position
    recreated = await configs.create(workspace, RETRYING)
    assert recreated.version == 4  # versions only grow: a delete takes a place in the stream
    found, state = await configs.show(workspace, "retrying")
    assert found.pipeline == msgspec.structs.replace(RETRYING, version=4)
    assert sorted(state.versions) == [1, 2, 4]


async def test_write_errors_append_nothing(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    with pytest.raises(InvalidArgument):
        await configs.create(workspace, pipeline(stage("a", "teleport")))
    for builtin in BUILTINS:
        with pytest.raises(Conflict):
            await configs.create(workspace, msgspec.structs.replace(RETRYING, name=builtin))
        with pytest.raises(Conflict):
            await configs.delete(workspace, builtin)
    with pytest.raises(NotFound):
        await configs.update(workspace, RETRYING)
    with pytest.raises(NotFound):
        await configs.delete(workspace, "retrying")
    assert await redis_store.head(workspace) == 0
    await configs.create(workspace, RETRYING)
    with pytest.raises(Conflict):
        await configs.create(workspace, RETRYING)
    with pytest.raises(Conflict) as stale:
        await configs.update(workspace, pipeline(stage("a"), name="retrying"), expected_version=7)
    assert stale.value.details["actual_version"] == 1
    with pytest.raises(Conflict):
        await configs.delete(workspace, "retrying", expected_version=2)
    assert await redis_store.head(workspace) == 1


async def test_concurrent_creates_record_one(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    results = await asyncio.gather(
        *(configs.create(workspace, RETRYING) for _ in range(5)), return_exceptions=True
    )
    assert sum(1 for r in results if isinstance(r, Conflict)) == 4
    assert await redis_store.stream_version(workspace, keys.pipeline_stream("retrying")) == 0


async def test_catalog_resolves_latest_at_once_and_caches_exact_versions(
    configs: PipelineConfigs, workspace: str
) -> None:
    source = CountingSource(configs)
    catalog = PipelineCatalog(source=source)
    await configs.create(workspace, RETRYING)
    with pytest.raises(NotFound):
        catalog.get(workspace, "retrying", 1)  # never does I/O: not loaded yet
    assert (await catalog.resolve(workspace, "retrying")).version == 1
    assert catalog.get(workspace, "retrying", 1).stage_names == RETRYING.stage_names
    await configs.update(workspace, pipeline(stage("only"), name="retrying"))
    latest = await catalog.resolve(workspace, "retrying")  # a new version is seen at once
    assert (latest.version, latest.stage_names) == (2, ["only"])
    assert await catalog.resolve(workspace, "retrying") is latest  # one copy per version
    source.calls.clear()
    for _ in range(3):
        assert catalog.get(workspace, "retrying", 1).version == 1
        assert (await catalog.resolve(workspace, "retrying", 2)).version == 2
    assert source.calls == []  # exact versions: dict lookups from now on
    assert catalog.get(workspace, "memory-ingest") is MEMORY_INGEST  # built-ins need no source


async def test_prefetch_loads_each_missing_version_once_and_concurrently(
    configs: PipelineConfigs, workspace: str
) -> None:
    for name in ("p1", "p2"):
        await configs.create(workspace, pipeline(stage("a"), name=name))
    source = CountingSource(configs)
    catalog = PipelineCatalog(source=source)
    wanted = [
        (workspace, "p1", 1),
        (workspace, "p2", 1),
        (workspace, "p1", 1),
        (workspace, "memory-ingest", 1),
        (workspace, "p1", 9),  # no such version: stays missing
    ]
    await catalog.prefetch(wanted)
    assert sorted(source.calls) == [
        (workspace, "p1", 1),
        (workspace, "p1", 9),
        (workspace, "p2", 1),
    ]
    assert catalog.get(workspace, "p2", 1).name == "p2"
    with pytest.raises(NotFound):
        catalog.get(workspace, "p1", 9)
    source.calls.clear()
    await catalog.prefetch(wanted[:4])
    assert source.calls == []


async def test_deleted_config_versions_stay_resolvable_for_a_new_process(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    await configs.create(workspace, RETRYING)
    await configs.delete(workspace, "retrying")
    catalog = PipelineCatalog(source=configs_of(redis_store))  # never saw it alive
    with pytest.raises(NotFound):
        await catalog.resolve(workspace, "retrying")  # new runs: gone
    assert (await catalog.resolve(workspace, "retrying", 1)).stage_names == RETRYING.stage_names
    with pytest.raises(NotFound):
        await catalog.resolve(workspace, "retrying", 2)  # the delete's place holds no version


async def test_configs_are_per_workspace(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    other = f"{workspace}-b"
    await configs.create(workspace, RETRYING)
    catalog = PipelineCatalog(source=configs)
    with pytest.raises(NotFound):
        await catalog.resolve(other, "retrying")
    await catalog.prefetch([(other, "retrying", 1)])
    with pytest.raises(NotFound):
        catalog.get(other, "retrying", 1)
    created = await configs.create(other, pipeline(stage("a"), name="retrying"))
    assert created.version == 1
    assert (await catalog.resolve(other, "retrying")).stage_names == ["a"]
    assert (await catalog.resolve(workspace, "retrying")).stage_names == RETRYING.stage_names


async def test_a_definition_appended_by_hand_is_not_loaded(
    configs: PipelineConfigs, redis_store: RedisEventStore, workspace: str
) -> None:
    forged = PipelineDefined.of(pipeline(stage("a", "teleport"), name="forged"), 1)
    await redis_store.append(workspace, keys.pipeline_stream("forged"), [new_event(forged)])
    catalog = PipelineCatalog(source=configs)
    with pytest.raises(NotFound):
        await catalog.resolve(workspace, "forged")
    with pytest.raises(NotFound):
        await catalog.resolve(workspace, "forged", 1)


# -- runs on a config, through a worker that has its own catalog -------------------


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    await client.aclose()


async def test_a_worker_runs_the_version_a_run_started_with_after_a_delete(
    configs: PipelineConfigs,
    redis_store: RedisEventStore,
    redis_url: str,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    # like separate processes: the submitter's and the worker's catalogs share nothing
    submitter = Submitter(
        redis_store, PipelineCatalog(source=configs_of(redis_store)), CommandBus(broker)
    )
    await configs.create(workspace, RETRYING)
    item = {"text": "Met Ada in London", "flaky": {"fail_times": 2}}
    run_id = (await submitter.submit(workspace, "retrying", item)).run_id
    await configs.update(workspace, pipeline(stage("only"), name="retrying"))
    await configs.delete(workspace, "retrying")
    with pytest.raises(NotFound):
        await submitter.submit(workspace, "retrying", item)
    catalog = PipelineCatalog(source=configs_of(redis_store))
    worker = Worker(
        redis_store,
        redis_url,
        catalog,
        default_actors(),
        WorkerConfig(poll_ms=20, claim_idle_ms=60_000, consumer=f"w-{uuid.uuid4().hex[:6]}"),
    )
    await worker.start()
    try:
        assert await wait_terminal(redis_store, workspace, [run_id]) == {run_id: "RunCompleted"}
    finally:
        await worker.stop()
    counts = await transitions(redis_store, workspace, run_id)
    assert counts[("StageFailed", 1, 1)] == counts[("StageFailed", 1, 2)] == 1
    assert counts[("StageCompleted", 1, 3)] == 1  # the flaky stage of version 1, third attempt
    events = await redis_store.read_stream(workspace, keys.run_stream(run_id))
    assert events[0].data["pipeline_version"] == 1
    assert [e.data["stage"] for e in events if e.type == "StageCompleted"] == [
        "normalize",
        "flaky",
        "summarize",
    ]
