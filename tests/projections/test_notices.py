"""Checkpoint notices on the real server: waiters woken by the writer, reads only as a fallback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from projection_helpers import Clock, as_recorded, lifecycle, write_views
from redis.exceptions import ResponseError

from stageline.events.keys import checkpoints_channel
from stageline.projections import RUN_STATUS, FalkorDBViews, Write
from stageline.projections.notices import Notices

LONG = 30.0
"""A fallback no test waits out: a waiter that returns in time was woken by a notice."""


class Counted:
    """``FalkorDBViews.checkpoint``, counting its calls."""

    def __init__(self, views: FalkorDBViews) -> None:
        self.views = views
        self.calls = 0

    async def __call__(self, workspace: str, projection: str) -> int:
        self.calls += 1
        return await self.views.checkpoint(workspace, projection)


@pytest.fixture
async def writer(redis_url: str) -> AsyncIterator[FalkorDBViews]:
    views = FalkorDBViews.from_url(redis_url)
    try:
        yield views
    finally:
        await views.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def run_events() -> list:
    life = lifecycle("r1", "completed", Clock())
    return as_recorded([(life.stream, e) for e in life.events])


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def subscribers(client: aioredis.Redis, workspace: str) -> int:
    [(_, count)] = await client.pubsub_numsub(checkpoints_channel(workspace))
    return int(count)


async def _none(client: aioredis.Redis, workspace: str) -> bool:
    return await subscribers(client, workspace) == 0


@pytest.fixture
async def counted(views: FalkorDBViews) -> AsyncIterator[tuple[Notices, Counted]]:
    """Notices whose fallback no test waits out, and their count of checkpoint reads."""
    read = Counted(views)
    notices = Notices(views.db.connection, read, fallback_s=LONG)
    try:
        yield notices, read
    finally:
        await notices.close()


async def waiting(
    notices: Notices, read: Counted, workspace: str, position: int, timeout: float = 10
) -> asyncio.Task[bool]:
    """A wait for ``position`` under way, on a confirmed subscription (so it waits for a
    notice, not polling): it has made the read it begins with."""
    async with notices.watching(workspace) as watch:
        await asyncio.wait_for(watch.subscribed.wait(), 10)
    before = read.calls
    waiter = asyncio.create_task(notices.wait_for(workspace, "run_status", position, timeout))
    await until(lambda: asyncio.sleep(0, read.calls == before + 1))
    return waiter


async def test_a_waiter_is_woken_by_the_writers_notice_then_reads(
    counted: tuple[Notices, Counted], writer: FalkorDBViews, workspace: str
) -> None:
    notices, read = counted
    events = run_events()
    waiter = await waiting(notices, read, workspace, len(events))
    assert not waiter.done()

    await write_views(writer, workspace, events)

    assert await asyncio.wait_for(waiter, 15)
    assert read.calls == 2  # when the wait began, and when the notice came


async def test_a_lost_notice_costs_a_read_not_the_answer(
    views: FalkorDBViews,
    writer: FalkorDBViews,
    client: aioredis.Redis,
    workspace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = ("PUBLISH", "stageline:test:nowhere", b"{}")
    monkeypatch.setattr(writer.notices, "command", lambda workspace, positions: elsewhere)
    read = Counted(views)
    notices = Notices(views.db.connection, read, fallback_s=0.05)
    events = run_events()
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(checkpoints_channel(workspace))
            waiter = await waiting(notices, read, workspace, len(events))
            await write_views(writer, workspace, events)

            assert await asyncio.wait_for(waiter, 15)
            assert read.calls >= 2
            heard = [await pubsub.get_message(timeout=0.2) for _ in range(2)]
        assert [m and m["type"] for m in heard] == ["subscribe", None]  # no notice came
    finally:
        await notices.close()


async def test_a_batch_is_announced_once_the_view_holds_it(
    views: FalkorDBViews, writer: FalkorDBViews, client: aioredis.Redis, workspace: str
) -> None:
    events = run_events()
    seen: list[tuple[int, int]] = []  # (announced, the checkpoint read as the notice came)

    async def listen(pubsub: Any) -> None:
        while len(seen) < 2:
            message = await pubsub.get_message(timeout=5)
            assert message is not None
            if message["type"] == "message":
                announced = json.loads(message["data"])["run_status"]
                seen.append((announced, await views.checkpoint(workspace)))

    async with client.pubsub() as pubsub:
        await pubsub.subscribe(checkpoints_channel(workspace))
        listener = asyncio.create_task(listen(pubsub))
        await write_views(writer, workspace, events[:3])
        await write_views(writer, workspace, events[3:], expected=3)
        await asyncio.wait_for(listener, 10)

    assert [announced for announced, _ in seen] == [3, len(events)]
    assert all(read >= announced for announced, read in seen)


async def test_a_dropped_view_is_announced_at_zero(
    views: FalkorDBViews, writer: FalkorDBViews, workspace: str
) -> None:
    events = run_events()
    async with views.notices.watching(workspace) as watch:
        await asyncio.wait_for(watch.subscribed.wait(), 10)
        await write_views(writer, workspace, events)
        while watch.positions.get("run_status") != len(events):
            assert await watch.moved(10)

        await writer.drop(workspace, RUN_STATUS)

        while watch.positions["run_status"] != 0:
            assert await watch.moved(10)
    assert not await views.wait_for(workspace, len(events), timeout_s=0.05)


async def test_waiters_hear_notices_again_once_the_subscription_reconnects(
    counted: tuple[Notices, Counted], writer: FalkorDBViews, client: aioredis.Redis, workspace: str
) -> None:
    notices, read = counted
    events = run_events()
    before = {c["id"] for c in await client.client_list(_type="pubsub")}
    waiter = await waiting(notices, read, workspace, len(events))
    [ours] = [c["id"] for c in await client.client_list(_type="pubsub") if c["id"] not in before]

    await client.client_kill_filter(_id=ours)
    await until(lambda: subscribers(client, workspace))  # subscribed again
    await write_views(writer, workspace, events)

    assert await asyncio.wait_for(waiter, 15)
    assert read.calls == 2


async def test_a_message_that_is_no_notice_is_skipped(
    counted: tuple[Notices, Counted], writer: FalkorDBViews, client: aioredis.Redis, workspace: str
) -> None:
    notices, read = counted
    events = run_events()
    waiter = await waiting(notices, read, workspace, len(events))
    await client.publish(checkpoints_channel(workspace), b"not a notice")
    await write_views(writer, workspace, events)

    assert await asyncio.wait_for(waiter, 15)
    assert read.calls == 2


async def test_a_notice_is_checked_by_a_read(
    counted: tuple[Notices, Counted], client: aioredis.Redis, workspace: str
) -> None:
    notices, read = counted
    waiter = await waiting(notices, read, workspace, 5, timeout=1)
    await client.publish(checkpoints_channel(workspace), b'{"run_status": 99}')

    assert not await asyncio.wait_for(waiter, 10)  # the view is still at 0
    assert read.calls == 3  # when the wait began, when the notice came, at the deadline


async def test_a_wait_cancelled_while_it_subscribes_leaves_the_workspace_usable(
    counted: tuple[Notices, Counted], writer: FalkorDBViews, workspace: str
) -> None:
    notices, read = counted
    events = run_events()
    first = asyncio.create_task(notices.wait_for(workspace, "run_status", 1, 10))
    await asyncio.sleep(0)  # under way: the subscription is sent
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    before = read.calls  # the cancelled wait's read may count
    waiter = await waiting(notices, read, workspace, len(events))
    await write_views(writer, workspace, events)

    assert await asyncio.wait_for(waiter, 15)
    assert read.calls == before + 2


async def test_a_workspace_nobody_waits_on_is_unsubscribed_and_comes_back(
    views: FalkorDBViews, writer: FalkorDBViews, client: aioredis.Redis, workspace: str
) -> None:
    read = Counted(views)
    notices = Notices(views.db.connection, read, fallback_s=LONG, idle_s=0.05)
    events = run_events()
    try:
        assert not await notices.wait_for(workspace, "run_status", 1, 0.01)
        await until(lambda: _none(client, workspace))

        # subscribed again, and it stays so while the wait lasts longer than idle_s
        before = read.calls
        waiter = await waiting(notices, read, workspace, len(events))
        await asyncio.sleep(0.3)
        assert await subscribers(client, workspace) == 1
        await write_views(writer, workspace, events)

        assert await asyncio.wait_for(waiter, 15)
        assert read.calls == before + 2
    finally:
        await notices.close()


async def test_waits_on_many_workspaces_share_one_connection(
    views: FalkorDBViews, client: aioredis.Redis
) -> None:
    notices = Notices(views.db.connection, views.checkpoint)
    workspaces = [f"w{i}-{id(notices)}" for i in range(5)]
    before = {c["id"] for c in await client.client_list(_type="pubsub")}
    try:
        waits = [notices.wait_for(ws, "run_status", 1, 0.2) for ws in workspaces]
        assert await asyncio.gather(*waits) == [False] * 5

        new = [c for c in await client.client_list(_type="pubsub") if c["id"] not in before]
        assert [int(c["sub"]) for c in new] == [5]
    finally:
        await notices.close()


async def test_a_user_refused_the_channels_still_writes_and_waits(
    redis_url: str, client: aioredis.Redis, workspace: str
) -> None:
    # Redis 7+ gives a new ACL user no channel; a deployment may never grant ours
    user = f"no-channels-{workspace}"
    await client.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"], reset_channels=True
    )
    views = FalkorDBViews.from_url(redis_url.replace("unix://", f"unix://{user}:pw@"))
    events = run_events()
    try:
        waiter = asyncio.create_task(views.wait_for(workspace, len(events), 10))
        await write_views(views, workspace, events)  # applied, and no error for the notice

        assert await asyncio.wait_for(waiter, 15)  # by reading, as no notice can come
    finally:
        await views.close()
        await client.acl_deluser(user)


async def test_a_write_the_server_refuses_still_raises(
    writer: FalkorDBViews, workspace: str
) -> None:
    events = run_events()
    bad = Write.built(RUN_STATUS, RUN_STATUS.fold(events), 0, "THIS IS NOT CYPHER")
    with pytest.raises(ResponseError):
        await writer.apply_all(workspace, [bad])

    assert await writer.checkpoint(workspace) == 0
