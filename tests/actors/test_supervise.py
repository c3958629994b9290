"""The supervisor: a broker outage told in two lines, consumers of killed workers swept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from actor_helpers import wait_terminal

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.pipeline import PipelineCatalog
from stageline.actors.submit import Submitter
from stageline.actors.supervise import stale_after_ms
from stageline.actors.worker import Worker, WorkerConfig
from stageline.embedded import EmbeddedServer
from stageline.events import keys
from stageline.events.redis_store import RedisEventStore, connect

CATALOG = PipelineCatalog()
ITEM = {"text": "Ada Lovelace met Charles Babbage in London."}


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A server of the test's own, to freeze or to fill with consumers."""
    with tempfile.TemporaryDirectory(prefix="slr", dir="/tmp") as data_dir:
        server = EmbeddedServer(data_dir)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def make_worker(store: RedisEventStore, url: str, consumer: str, **config: Any) -> Worker:
    return Worker(
        store, url, CATALOG, default_actors(), WorkerConfig(poll_ms=20, consumer=consumer, **config)
    )


async def until(condition: Callable[[], Awaitable[bool] | bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        done = condition()
        if done if isinstance(done, bool) else await done:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {within}s")
        await asyncio.sleep(0.05)


def logged(capsys: pytest.CaptureFixture[str], seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON lines logged since the last call, added to ``seen``; all of ``seen``."""
    seen += [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    return seen


async def test_an_outage_is_one_line_and_its_end_another_with_no_fetch_errors_between(
    own_server: EmbeddedServer, workspace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RedisEventStore.from_url(own_server.url)
    client = connect(own_server.url)
    submitter = Submitter(store, CATALOG, CommandBus(client))
    w = make_worker(store, own_server.url, "w-outage", supervise_seconds=0.1)
    await w.start()
    assert own_server.pid is not None
    lines: list[dict[str, Any]] = []

    def events(name: str) -> list[dict[str, Any]]:
        return [line for line in logged(capsys, lines) if line["event"] == name]

    try:
        first = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
        await wait_terminal(store, workspace, [first])
        os.kill(own_server.pid, signal.SIGSTOP)  # as a hung server: it takes, never answers
        try:
            await until(lambda: bool(events("broker.unreachable")), 10, "broker.unreachable")
            await asyncio.sleep(7)  # the subscribers' reads time out, and fail again
        finally:
            os.kill(own_server.pid, signal.SIGCONT)
        await until(lambda: bool(events("broker.reachable")), 10, "broker.reachable")

        assert events("Message fetch error") == []
        [down] = events("broker.unreachable")
        assert down["level"] == "warning"
        assert down["error"] == "timed out after 1s"
        [back] = events("broker.reachable")
        assert back["level"] == "info"
        assert back["down_seconds"] >= 7
        assert back["fetch_errors_dropped"] >= 1

        second = (await submitter.submit(workspace, "memory-ingest", ITEM)).run_id
        assert await wait_terminal(store, workspace, [second]) == {second: "RunCompleted"}
        assert len(events("broker.unreachable")) == 1
    finally:
        await w.stop()
        await store.close()
        await client.aclose()


async def test_consumers_of_killed_workers_are_swept_live_and_pending_ones_kept(
    own_server: EmbeddedServer,
) -> None:
    client = connect(own_server.url)
    store = RedisEventStore.from_url(own_server.url)
    channel, group = keys.stage_channel("extract"), keys.stage_group("extract")
    bus = CommandBus(client)
    await bus.ensure_groups(["extract"])
    await bus.ensure_group(keys.INGEST_CHANNEL, keys.INGEST_GROUP)
    await client.xadd(channel, {"__data__": b"x"})
    # taken by a worker killed before it handled it: pending, to be claimed after 30 s
    await client.xreadgroup(group, "killed-holding", {channel: ">"}, count=1)
    await client.xgroup_createconsumer(channel, group, "killed")
    await client.xgroup_createconsumer(keys.INGEST_CHANNEL, keys.INGEST_GROUP, "killed")
    w = make_worker(store, own_server.url, "w-live", supervise_seconds=3600)
    await w.start()
    try:
        await asyncio.sleep(1.2)
        w.supervisor.stale_ms = 1000  # as if an hour had passed

        assert await w.supervisor.check() == 0  # its first round sweeps
        names = {c["name"] for c in await client.xinfo_consumers(channel, group)}
        assert names == {b"w-live", b"killed-holding"}
        ingest = await client.xinfo_consumers(keys.INGEST_CHANNEL, keys.INGEST_GROUP)
        assert [c["name"] for c in ingest] == [b"w-live"]
    finally:
        await w.stop()
        await store.close()
        await client.aclose()


def test_a_consumer_is_stale_after_ten_claim_windows_and_at_least_an_hour() -> None:
    assert stale_after_ms(30_000) == 3_600_000
    assert stale_after_ms(600_000) == 6_000_000
