"""A worker under trouble: poison commands, lost consumer groups, SIGTERM while busy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import idle, wait_terminal
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stageline.actors.attempt import STOPPED
from stageline.actors.builtin import default_actors
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.commands import StageCommand, decode
from stageline.actors.deadletters import STREAM, decode_poison
from stageline.actors.pipeline import Pipeline, PipelineCatalog, RetryPolicy, StageSpec
from stageline.actors.runtime import CUT_OFF_S
from stageline.actors.schedule import scheduled_entry
from stageline.actors.stage import StageContext, StageError, StageResult
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.embedded import EmbeddedServer
from stageline.events import keys
from stageline.events.redis_store import RedisEventStore, connect

CATALOG = PipelineCatalog()  # memory-ingest and flaky, as a `stageline worker` has them
ITEM = {"text": "Ada Lovelace met Charles Babbage in London."}


def make_worker(store: RedisEventStore, url: str, consumer: str, **config: Any) -> Worker:
    return Worker(
        store, url, CATALOG, default_actors(), WorkerConfig(poll_ms=20, consumer=consumer, **config)
    )


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def submitter(redis_store: RedisEventStore, broker: aioredis.Redis) -> Submitter:
    return Submitter(redis_store, CATALOG, CommandBus(broker))


@contextlib.contextmanager
def embedded() -> Iterator[EmbeddedServer]:
    with tempfile.TemporaryDirectory(prefix="slr", dir="/tmp") as data_dir:
        server = EmbeddedServer(data_dir)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A server of the test's own, for what would disturb the shared one (FLUSHALL, DEL)."""
    with embedded() as server:
        yield server


@pytest.fixture
def store_server() -> Iterator[EmbeddedServer]:
    """A second server, holding the store apart from the broker."""
    with embedded() as server:
        yield server


async def dead_letters(store: RedisEventStore, workspace: str) -> list[dict[str, Any]]:
    return [e.data for e in await store.read_stream(workspace, STREAM)]


async def until(
    condition: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "condition"
) -> None:
    """Poll an async ``condition()`` until it is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {within}s")
        await asyncio.sleep(0.02)


# -- poison commands ---------------------------------------------------------------


async def test_claimed_entry_delivered_too_often_is_dead_lettered_not_handled(
    redis_store: RedisEventStore,
    redis_url: str,
    broker: aioredis.Redis,
    submitter: Submitter,
    workspace: str,
) -> None:
    channel, group = keys.stage_channel("normalize"), keys.stage_group("normalize")
    await CommandBus(broker).ensure_groups(["normalize"])
    poisoned = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
    healthy = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
    # a worker took both and died; the first had already been delivered 5 times, the other 3
    taken = await broker.xreadgroup(group, "dead-worker", {channel: ">"}, count=100)
    ids = {}
    for entry_id, fields in taken[0][1]:
        command = decode_poison(fields[b"__data__"])
        if command is not None:
            ids[command.run_id] = entry_id
    await broker.execute_command("XCLAIM", channel, group, "dead-worker", 0, ids[poisoned], "RETRYCOUNT", 5)  # fmt: skip
    await broker.execute_command("XCLAIM", channel, group, "dead-worker", 0, ids[healthy], "RETRYCOUNT", 3)  # fmt: skip

    w = make_worker(redis_store, redis_url, "w-poison", claim_idle_ms=100, max_deliveries=5)
    await w.start()
    try:
        assert await wait_terminal(redis_store, workspace, [healthy]) == {healthy: "RunCompleted"}
        await idle(broker, "normalize")
    finally:
        await w.stop()

    [letter] = await dead_letters(redis_store, workspace)
    assert (letter["run_id"], letter["actor"], letter["deliveries"]) == (poisoned, "normalize", 6)
    assert letter["command"]["run_id"] == poisoned  # kept whole, so it can be redriven
    assert letter["stage"] == "normalize"  # listed under its stage, like a failed run
    assert "delivered 6 times" in letter["error"]
    assert await redis_store.stream_version(workspace, keys.run_stream(poisoned)) == 0


async def test_command_that_fails_every_worker_lands_in_the_dead_letters(
    redis_store: RedisEventStore,
    redis_url: str,
    broker: aioredis.Redis,
    submitter: Submitter,
    workspace: str,
) -> None:
    w = make_worker(redis_store, redis_url, "w-crash", claim_idle_ms=100, max_deliveries=3)
    handle = w.runtime.handle

    async def crashing(actor: str, batch: Sequence[StageCommand], **kw: Any) -> None:
        if any(c.item.get("poison") for c in batch):
            raise RuntimeError("worker crashed on this command")
        await handle(actor, batch, **kw)

    w.runtime.handle = crashing  # type: ignore[method-assign]
    await w.start()
    try:
        poisoned = (
            await submitter.submit(workspace, "memory-ingest", {**ITEM, "poison": 1})
        ).run_id
        others = [
            (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id for _ in range(5)
        ]
        done = await wait_terminal(redis_store, workspace, others)
        assert set(done.values()) == {"RunCompleted"}
        await until(lambda: _has_letters(redis_store, workspace), what="a dead letter")
        await idle(broker, "normalize")
    finally:
        await w.stop()

    [letter] = await dead_letters(redis_store, workspace)
    assert letter["run_id"] == poisoned
    assert letter["deliveries"] == 4  # failed 3 times; the 4th delivery is dead-lettered
    assert await redis_store.stream_version(workspace, keys.run_stream(poisoned)) == 0


async def _has_letters(store: RedisEventStore, workspace: str) -> bool:
    return bool(await dead_letters(store, workspace))


# -- lost connections ---------------------------------------------------------------


async def test_batch_whose_appends_fail_on_a_lost_store_stays_pending_and_is_claimed(
    own_server: EmbeddedServer, store_server: EmbeddedServer, workspace: str
) -> None:
    submit_store = RedisEventStore.from_url(store_server.url)
    # the worker's store client gives up at once, so the test need not outlast its retries
    worker_store = RedisEventStore(
        aioredis.Redis.from_url(store_server.url, retry=Retry(NoBackoff(), 0))
    )
    client = connect(own_server.url)
    submitter = Submitter(submit_store, CATALOG, CommandBus(client))
    run = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
    await asyncio.to_thread(store_server.stop)
    w = make_worker(worker_store, own_server.url, "w-lost", claim_idle_ms=100, max_deliveries=1)
    failures = 0
    handle = w.runtime.handle

    async def counting(actor: str, batch: Sequence[StageCommand], **kw: Any) -> None:
        nonlocal failures
        try:
            await handle(actor, batch, **kw)
        except Exception:
            failures += 1
            raise

    w.runtime.handle = counting  # type: ignore[method-assign]
    await w.start()
    try:

        async def failed_past_the_delivery_limit() -> bool:
            return failures >= 3

        await until(failed_past_the_delivery_limit, what="deliveries failing on the lost store")
        channel, group = keys.stage_channel("normalize"), keys.stage_group("normalize")
        [entry] = await client.xpending_range(channel, group, min="-", max="+", count=10)
        assert entry["times_delivered"] <= 1  # failures of Redis are not counted against it
        await asyncio.to_thread(store_server.start)  # same directory and socket
        assert await wait_terminal(submit_store, workspace, [run]) == {run: "RunCompleted"}
        await idle(client, "normalize")
        assert await dead_letters(submit_store, workspace) == []
    finally:
        await w.stop()
        await worker_store.close()
        await submit_store.close()
        await client.aclose()


# -- lost consumer groups ----------------------------------------------------------


async def test_subscribers_stopped_by_a_deleted_channel_are_restarted(
    own_server: EmbeddedServer, workspace: str
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    client = connect(own_server.url)
    submitter = Submitter(store, CATALOG, CommandBus(client))
    # the supervisor's own loop stays out of the way: this test drives its checks
    w = make_worker(store, own_server.url, "w-groups", supervise_seconds=3600)
    await w.start()
    try:
        first = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
        await wait_terminal(store, workspace, [first])

        await client.delete(keys.stage_channel("classify"))
        classify = [s for s in w.broker.subscribers if s.stream_sub.name.endswith(":classify")]  # type: ignore[attr-defined]
        await until(
            lambda: _all_stopped(classify), what="FastStream stopping the classify subscribers"
        )
        assert await w.supervisor.check() == 2  # the subscriber and its claimer
        assert all(s.running for s in w.broker.subscribers)
        assert await w.supervisor.check() == 0

        second = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
        assert await wait_terminal(store, workspace, [second]) == {second: "RunCompleted"}
    finally:
        await w.stop()
        await store.close()
        await client.aclose()


async def test_worker_carries_on_by_itself_after_flushall(
    own_server: EmbeddedServer, workspace: str
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    client = connect(own_server.url)
    submitter = Submitter(store, CATALOG, CommandBus(client))
    w = make_worker(store, own_server.url, "w-flush", supervise_seconds=0.1)
    await w.start()
    try:
        first = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
        await wait_terminal(store, workspace, [first])
        await client.flushall()
        runs = [(await submitter.submit(workspace, "flaky", ITEM)).run_id for _ in range(3)]
        done = await wait_terminal(store, workspace, runs)
        assert set(done.values()) == {"RunCompleted"}
        for actor in ("normalize", "flaky", "summarize"):
            groups = await client.xinfo_groups(keys.stage_channel(actor))
            assert [g["name"] for g in groups] == [keys.stage_group(actor).encode()]
    finally:
        await w.stop()
        await store.close()
        await client.aclose()


async def _all_stopped(subscribers: Sequence[Any]) -> bool:
    return all(not s.running for s in subscribers)


# -- SIGTERM drains ----------------------------------------------------------------


def worker_env(url: str, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.update(
        STAGELINE_REDIS_URL=url,
        STAGELINE_LOG_FORMAT="json",
        STAGELINE_POLL_MS="20",
        STAGELINE_CLAIM_IDLE_MS="1000",
    )
    env.update({f"STAGELINE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stageline", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_ready(proc: subprocess.Popen[bytes], log: Path, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while b'"stageline.ready"' not in await asyncio.to_thread(log.read_bytes):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"worker not ready (exit {proc.poll()}):\n{tail(log)}")
        await asyncio.sleep(0.05)


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def stage_started(store: RedisEventStore, workspace: str, run_id: str, index: int) -> bool:
    events = await store.read_stream(workspace, keys.run_stream(run_id))
    return any(e.type == "StageStarted" and e.data["index"] == index for e in events)


async def sigterm_and_time(proc: subprocess.Popen[bytes], within: float) -> float:
    """Send SIGTERM; seconds until the process exited (fails the test past ``within``)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None:
        if time.monotonic() - started > within:
            proc.kill()
            pytest.fail(f"worker still running {within}s after SIGTERM")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_sigterm_finishes_the_batch_in_hand_and_takes_nothing_new(
    own_server: EmbeddedServer, workspace: str, tmp_path: Path
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    client = connect(own_server.url)
    submitter = Submitter(store, CATALOG, CommandBus(client))
    env = worker_env(own_server.url, drain_seconds=5)
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    try:
        await wait_ready(proc, log)
        item = {**ITEM, "flaky": {"fail_times": 0, "sleep_seconds": 1.0}}
        run = (await submitter.submit(workspace, "flaky", item)).run_id
        await until(lambda: stage_started(store, workspace, run, 1), what="the flaky stage")
        took = await sigterm_and_time(proc, within=5 + 1)
        assert proc.returncode == 0, tail(log)
        events = await store.read_stream(workspace, keys.run_stream(run))
        # the slow stage finished and handed on; the next stage was not taken any more
        assert [e.type for e in events if e.type.startswith(("Stage", "Run"))][-2:] == [
            "StageStarted",
            "StageCompleted",
        ]
        assert events[-1].type != "RunCompleted"
        print(f"\nSIGTERM with a 1 s stage in hand: exited after {took:.2f}s")

        proc = start_worker(env, log)  # the next worker picks the run up where it stopped
        await wait_ready(proc, log)
        assert await wait_terminal(store, workspace, [run]) == {run: "RunCompleted"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await store.close()
        await client.aclose()


async def test_sigterm_exits_within_the_drain_time_recording_the_attempt_it_drops(
    own_server: EmbeddedServer, workspace: str, tmp_path: Path
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    client = connect(own_server.url)
    submitter = Submitter(store, CATALOG, CommandBus(client))
    log = tmp_path / "worker.log"
    proc = start_worker(worker_env(own_server.url, drain_seconds=1.5), log)
    try:
        await wait_ready(proc, log)
        item = {**ITEM, "flaky": {"fail_times": 0, "sleep_seconds": 4.0}}
        run = (await submitter.submit(workspace, "flaky", item)).run_id
        await until(lambda: stage_started(store, workspace, run, 1), what="the flaky stage")
        took = await sigterm_and_time(proc, within=1.5 + 1)
        print(f"\nSIGTERM with a 4 s stage in hand, drain 1.5 s: exited after {took:.2f}s")
        # a stop, not a failure: one warning line, no traceback of the cancellation
        assert proc.returncode == 0, tail(log)
        said = log.read_text()
        assert "Traceback" not in said and "CancelledError" not in said, said
        assert '"worker.batch_cut_off"' in said
        events = await store.read_stream(workspace, keys.run_stream(run))
        # the attempt cut off is recorded abandoned, its next one due at once
        assert [e.type for e in events][-2:] == ["StageStarted", "StageFailed"]
        assert (events[-1].data["error_type"], events[-1].data["error"]) == (
            "AttemptAbandoned",
            STOPPED,
        )
        assert events[-1].data["will_retry"]
        # its entry acknowledged with it, and the next attempt's command on the channel
        channel, group = keys.stage_channel("flaky"), keys.stage_group("flaky")
        assert (await client.xpending(channel, group))["pending"] == 0
        [*_, (_, fields)] = await client.xrange(channel)
        handed_on = decode(fields[DATA_FIELD.encode()])
        assert (handed_on.run_id, handed_on.attempt) == (run, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await store.close()
        await client.aclose()


async def test_a_stop_that_cannot_reach_redis_drops_its_attempts_within_the_cut_off_time(
    own_server: EmbeddedServer, workspace: str
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    pipeline = Pipeline(name="flaky-alone", stages=(StageSpec(name="flaky", actor="flaky"),))
    catalog = PipelineCatalog([pipeline])
    worker = Worker(store, own_server.url, catalog, default_actors(), WorkerConfig())
    run = await Submitter(store, catalog, CommandBus(worker.client)).submit(
        workspace, "flaky-alone", {}
    )
    item = {"flaky": {"fail_times": 0, "sleep_seconds": 30}}
    command = StageCommand(
        workspace=workspace, run_id=run.run_id, pipeline=pipeline.name, pipeline_version=1,
        index=0, version=0, item=item,
    )  # fmt: skip
    try:
        handling = asyncio.create_task(worker.runtime.handle("flaky", [command]))
        await until(lambda: stage_started(store, workspace, run.run_id, 0), what="the stage")
        own_server.kill()  # Redis gone: its clients would retry for seconds
        started = time.monotonic()
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling
        await worker.runtime.cut_offs()
        took = time.monotonic() - started
        assert took < CUT_OFF_S + 0.5, took

        own_server.start()  # nothing recorded: the attempt is left as before, to be presumed lost
        events = await store.read_stream(workspace, keys.run_stream(run.run_id))
        assert [e.type for e in events] == ["RunSubmitted", "StageStarted"]
    finally:
        await worker.client.aclose()
        await store.close()


async def test_a_stop_with_the_store_apart_records_the_attempt_then_hands_it_on(
    own_server: EmbeddedServer, store_server: EmbeddedServer, workspace: str
) -> None:
    store = RedisEventStore.from_url(store_server.url)
    client = connect(own_server.url)
    pipeline = Pipeline(name="flaky-alone", stages=(StageSpec(name="flaky", actor="flaky"),))
    catalog = PipelineCatalog([pipeline])
    config = WorkerConfig(poll_ms=20, drain_seconds=1.0, claim_idle_ms=600_000)
    worker = Worker(store, own_server.url, catalog, default_actors(), config)
    assert not worker.runtime.outbox  # the append cannot write the channels: a step of its own
    item = {"flaky": {"fail_times": 0, "sleep_seconds": 30}}
    try:
        await worker.start()
        try:
            submitter = Submitter(store, catalog, CommandBus(client))
            run = (await submitter.submit(workspace, pipeline.name, item)).run_id
            await until(lambda: stage_started(store, workspace, run, 0), what="the stage")
        finally:
            await worker.stop()
        events = await store.read_stream(workspace, keys.run_stream(run))
        assert [e.type for e in events][-2:] == ["StageStarted", "StageFailed"]
        channel, group = keys.stage_channel("flaky"), keys.stage_group("flaky")
        assert (await client.xpending(channel, group))["pending"] == 0
        [*_, (_, fields)] = await client.xrange(channel)
        handed_on = decode(fields[DATA_FIELD.encode()])
        assert (handed_on.attempt, handed_on.cause) == (2, str(events[-1].event_id))
    finally:
        await client.aclose()
        await store.close()


# a stage whose attempts pass, fail (retried in a minute) or run on, as each run's item says;
# the next stage's actor runs on no worker here: what the first hands on stays on its channel
MIXED = Pipeline(
    name="stop-mixed",
    stages=(
        StageSpec(
            name="mixed",
            actor="stop-mixed",
            timeout_seconds=120,
            retry=RetryPolicy(max_retries=1, backoff_seconds=60),
        ),
        StageSpec(name="then", actor="stop-then"),
    ),
)


async def mixed(item: dict[str, Any], ctx: StageContext) -> StageResult:
    if item["do"] == "hang":
        await asyncio.sleep(120)
    if item["do"] == "fail":
        raise StageError("fails, to be retried")
    return StageResult(output={"passed": True})


async def recorded(store: RedisEventStore, workspace: str, run_id: str, type_: str) -> bool:
    return any(e.type == type_ for e in await store.read_stream(workspace, keys.run_stream(run_id)))


async def on_channel(client: aioredis.Redis, actor: str) -> list[StageCommand]:
    entries = await client.xrange(keys.stage_channel(actor))
    return [decode(fields[DATA_FIELD.encode()]) for _, fields in entries]


@pytest.mark.parametrize("apart", [True, False], ids=["store-apart", "one-server"])
async def test_a_stopped_batch_sends_what_its_ended_attempts_hand_on_with_its_abandonment(
    apart: bool, own_server: EmbeddedServer, request: pytest.FixtureRequest, workspace: str
) -> None:
    store_url = request.getfixturevalue("store_server").url if apart else own_server.url
    store = RedisEventStore.from_url(store_url)
    client = connect(own_server.url)
    catalog = PipelineCatalog([MIXED])
    actors = default_actors()
    actors.register("stop-mixed", mixed)
    config = WorkerConfig(poll_ms=20, drain_seconds=1.0, claim_idle_ms=600_000)
    worker = Worker(store, own_server.url, catalog, actors, config)
    assert worker.runtime.outbox is not apart
    try:
        # submitted before the worker starts: its first read takes the three as one batch
        submitter = Submitter(store, catalog, CommandBus(client))
        runs = {
            do: (await submitter.submit(workspace, MIXED.name, {"do": do})).run_id
            for do in ("pass", "fail", "hang")
        }
        await worker.start()
        try:
            await until(
                lambda: recorded(store, workspace, runs["pass"], "StageCompleted"), what="pass"
            )
            await until(
                lambda: recorded(store, workspace, runs["fail"], "StageFailed"), what="fail"
            )
        finally:
            await worker.stop()  # cuts the third attempt off, the other two recorded

        def read(run: str) -> Awaitable[list[Any]]:
            return store.read_stream(workspace, keys.run_stream(runs[run]))

        passed, failed, hung = await read("pass"), await read("fail"), await read("hang")
        assert [e.type for e in hung][-1] == "StageFailed"
        assert hung[-1].data["error"] == STOPPED
        # what each attempt of the batch hands on written, once: the next stage's command,
        # the failed attempt's retry in the scheduler, the abandoned one's on the channel
        channel, group = keys.stage_channel("stop-mixed"), keys.stage_group("stop-mixed")
        [then] = await on_channel(client, "stop-then")
        assert (then.run_id, then.index, then.version) == (runs["pass"], 1, passed[-1].version)
        assert then.cause == str(passed[-1].event_id)
        retried = [c for c in await on_channel(client, "stop-mixed") if c.attempt == 2]
        assert [(c.run_id, c.cause) for c in retried] == [(runs["hang"], str(hung[-1].event_id))]
        [(member, due)] = await client.zrange(keys.SCHEDULED, 0, -1, withscores=True)
        prefix = scheduled_entry(channel, b"")
        assert member.startswith(prefix)
        retry = decode(member[len(prefix) :])
        assert (retry.run_id, retry.attempt, retry.cause) == (
            runs["fail"],
            2,
            str(failed[-1].event_id),
        )
        assert due == pytest.approx(failed[-1].data["retry_at"].timestamp(), abs=0.01)
        # and every entry of the batch acknowledged with it
        assert (await client.xpending(channel, group))["pending"] == 0
    finally:
        await client.aclose()
        await store.close()
