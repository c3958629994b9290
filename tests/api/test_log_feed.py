"""``/v1/log/feed``: the workspace log as Server-Sent Events, live, resumable by id."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from api_helpers import HANG_GUARD, FeedReader, assert_error, fields, served
from fastapi import FastAPI

from stageline.api import create_app
from stageline.api import feed as feed_module
from stageline.api import log as log_module
from stageline.api.limits import MAX_POSITION
from stageline.events import NewEvent
from stageline.stack import Stack


async def append(stack: Stack, workspace: str, stream: str, *types: str, **data: Any) -> None:
    await stack.store.append(workspace, stream, [NewEvent(type=t, data=data) for t in types])


async def log_of(client: httpx.AsyncClient, after: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """``GET /v1/log``'s body as sent, and its events."""
    r = await client.get("/v1/log", params={"after": after, "limit": 1000})
    assert r.status_code == 200, r.text
    return r.text, r.json()["events"]


@asynccontextmanager
async def opened(
    url: str,
    workspace: str | None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[FeedReader]:
    """The feed's answer at ``url`` (a live server), read as it comes; ``workspace`` is
    sent as ``X-Workspace`` unless None."""
    sent = {"X-Workspace": workspace} if workspace is not None else {}
    async with (
        httpx.AsyncClient(base_url=url, headers=sent, timeout=HANG_GUARD) as c,
        c.stream("GET", "/v1/log/feed", params=params or {}, headers=headers or {}) as r,
    ):
        assert r.status_code == 200, (await r.aread()).decode()
        yield FeedReader(r)


class Reads:
    """A store whose ``tail`` calls are watched: how each ended."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.ended: list[str] = []
        """``returned``, ``raised`` or ``cancelled``, in the order they ended."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def tail(self, *args: Any, **kwargs: Any) -> Any:
        try:
            found = await self._store.tail(*args, **kwargs)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        except BaseException:
            self.ended.append("raised")
            raise
        self.ended.append("returned")
        return found


@pytest.fixture
def reads(stack: Stack) -> Reads:
    return Reads(stack.store)


@pytest.fixture
def watched(stack: Stack, reads: Reads) -> FastAPI:
    """An app whose store reads are ``reads``."""
    return create_app(stack=dataclasses.replace(stack, store=reads), stopping=asyncio.Event())


async def until(condition: Any) -> None:
    """Wait until ``condition()`` holds; fails after ``HANG_GUARD`` seconds."""
    async with asyncio.timeout(HANG_GUARD):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_the_feed_sends_the_log_then_each_event_as_it_is_appended(
    app: FastAPI, stack: Stack, client: httpx.AsyncClient, workspace: str
) -> None:
    # line breaks JSON strings may hold raw, which SSE must not take for line ends
    await append(stack, workspace, "a", "Noted", "Noted", text="one\u2028two\x85three")
    await append(stack, workspace, "b", "Seen", text="line\nbreak\r")
    async with served(app) as url, opened(url, workspace, {"after": 1}) as feed:
        assert feed.response.headers["content-type"].startswith("text/event-stream")
        assert feed.response.headers["cache-control"] == "no-cache"
        assert feed.response.headers["x-correlation-id"]
        before = await feed.events(2)
        assert feed.raw.startswith(b"retry: 1000\n\n")
        await append(stack, workspace, "a", "Noted", "Noted", text="after")
        after = await feed.events(2)

    body, log = await log_of(client, after=1)
    received = before + after
    assert [m.last_id for m in received] == ["2", "3", "4", "5"]
    assert {m.event for m in received} == {"log"}
    assert [json.loads(m.data or "") for m in received] == log
    for message in received:  # byte for byte the JSON `GET /v1/log` sends
        assert message.data and message.data in body
    assert f"id: 2\nevent: log\ndata: {received[0].data}\n\n".encode() in feed.raw


async def test_a_feed_of_a_workspace_with_no_log_waits_for_its_first_event(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    async with served(app) as url, opened(url, workspace) as feed:
        await feed.until_raw(b"retry:")
        await append(stack, workspace, "s", "First")
        [first] = await feed.events(1)
    assert first.last_id == "1" and json.loads(first.data or "")["type"] == "First"


async def test_a_feed_resumed_with_last_event_id_sends_exactly_the_events_after_it(
    app: FastAPI, stack: Stack, client: httpx.AsyncClient, workspace: str
) -> None:
    for n in range(5):
        await append(stack, workspace, f"s{n % 2}", "Noted", n=n)
    async with served(app) as url:
        async with opened(url, workspace) as feed:
            first = await feed.events(3)
        await append(stack, workspace, "s0", "Noted", "Noted", n=5)
        # the header wins over `after`, as an EventSource reconnecting sends both
        resumed = {"Last-Event-ID": first[-1].last_id}
        async with opened(url, workspace, {"after": 0}, resumed) as feed:
            rest = await feed.events(4)
            await append(stack, workspace, "s1", "Noted", n=7)
            [last] = await feed.events(1)  # next after the 7th: nothing came in between

    _, log = await log_of(client)
    got = [json.loads(m.data or "") for m in [*first, *rest, last]]
    assert got == log and [e["position"] for e in got] == list(range(1, 9))


async def test_filters_leave_events_out_and_resumption_passes_them_over(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    await append(stack, workspace, "run-1", "A")
    await append(stack, workspace, "other", "A")
    await append(stack, workspace, "run-2", "B")
    await append(stack, workspace, "run-3", "C")
    await append(stack, workspace, "other", "B")
    async with served(app) as url:
        only = {"stream_prefix": "run-", "type": ["A", "B"]}
        async with opened(url, workspace, only) as feed:
            got = [await feed.next() for _ in range(3)]
        # the last ones were left out: an id-only block moves Last-Event-ID past them
        assert [(m.last_id, m.data is not None) for m in got] == [
            ("1", True),
            ("3", True),
            ("5", False),
        ]
        assert [json.loads(m.data or "")["stream"] for m in got[:2]] == ["run-1", "run-2"]
        await append(stack, workspace, "run-4", "B")
        async with opened(url, workspace, only, {"Last-Event-ID": got[-1].last_id}) as feed:
            [next_one] = await feed.events(1)
        assert next_one.last_id == "6"


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"after": -1}, {}, "after"),
        ({"after": MAX_POSITION + 1}, {}, "after"),
        ({"after": "x"}, {}, "after"),
        ({}, {"Last-Event-ID": "x"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "1.0"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": ""}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": str(MAX_POSITION + 1)}, "Last-Event-ID"),
        ({"after": 0}, {"Last-Event-ID": " 7"}, "Last-Event-ID"),
        ({"stream_prefix": ""}, {}, "stream_prefix"),
        ({"type": [f"T{n}" for n in range(51)]}, {}, "type"),
        ({"stream_prefix": " run-"}, {}, "stream_prefix"),
        ({"type": ""}, {}, "type[0]"),
        ({"type": ["Noted", "not a type"]}, {}, "type[1]"),
    ],
)
async def test_a_bad_position_or_filter_is_400_before_anything_is_streamed(
    client: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    async with asyncio.timeout(HANG_GUARD):  # a feed that streams would never end
        r = await client.get("/v1/log/feed", params=params, headers=headers)
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == [field]


async def test_a_position_past_the_head_is_400_not_a_feed_that_never_sends(
    stack: Stack, client: httpx.AsyncClient, workspace: str
) -> None:
    await append(stack, workspace, "s", "Noted")
    for params, headers, field in (
        ({"after": 1000}, {}, "after"),
        ({}, {"Last-Event-ID": "2"}, "Last-Event-ID"),
    ):
        async with asyncio.timeout(HANG_GUARD):  # a feed that streams would never end
            r = await client.get("/v1/log/feed", params=params, headers=headers)
        error = assert_error(r, 400, "INVALID_ARGUMENT")
        assert error["details"] == {field: int(params.get("after", 2)), "head": 1}
        assert "past the workspace log's head (1)" in error["message"]


async def test_a_feed_named_by_the_workspace_parameter_sends_only_that_workspaces_events(
    stack: Stack, workspace: str
) -> None:
    other = f"{workspace}-other"
    settings = stack.settings.model_copy(update={"workspace": workspace})
    app = create_app(stack=stack, settings=settings)  # `workspace` is the default
    await append(stack, workspace, "s", "InDefault")
    await append(stack, other, "s", "InOther")
    # as an EventSource asks: no X-Workspace header
    async with served(app) as url, opened(url, None, {"workspace": other}) as feed:
        [first] = await feed.events(1)
        await append(stack, workspace, "s", "InDefault")
        await append(stack, other, "s", "InOther")
        [second] = await feed.events(1)
    got = [json.loads(m.data or "") for m in (first, second)]
    assert [(e["workspace"], e["type"], e["position"]) for e in got] == [
        (other, "InOther", 1),
        (other, "InOther", 2),
    ]


async def test_the_same_workspace_in_the_header_and_the_parameter_is_one_workspace(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    await append(stack, workspace, "s", "Noted")
    async with served(app) as url, opened(url, workspace, {"workspace": workspace}) as feed:
        [first] = await feed.events(1)
    assert json.loads(first.data or "")["workspace"] == workspace


async def test_a_workspace_parameter_that_clashes_with_the_header_is_400(
    client: httpx.AsyncClient, workspace: str
) -> None:
    other = f"{workspace}-other"
    async with asyncio.timeout(HANG_GUARD):  # a feed that streams would never end
        r = await client.get("/v1/log/feed", params={"workspace": other})
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert repr(workspace) in error["message"] and repr(other) in error["message"]
    assert error["details"] == {"header": workspace, "query": other}


@pytest.mark.parametrize("malformed", ["", "has space", "-dash", "a" * 65, "x/y", "ws\n"])
async def test_a_malformed_workspace_parameter_is_400_as_the_header_is(
    app: FastAPI, malformed: str
) -> None:
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        asyncio.timeout(HANG_GUARD),  # a feed that streams would never end
    ):
        by_param = await c.get("/v1/log/feed", params={"workspace": malformed})
        by_header = await c.get("/v1/log/feed", headers={"X-Workspace": malformed})
    error = assert_error(by_param, 400, "INVALID_ARGUMENT")
    assert error == assert_error(by_header, 400, "INVALID_ARGUMENT")
    assert error["details"] == {"workspace": malformed}


async def test_a_feed_ends_when_its_client_goes(
    watched: FastAPI, reads: Reads, workspace: str
) -> None:
    feeds = watched.state.feeds
    async with served(watched) as url:
        async with opened(url, workspace) as feed:
            await feed.until_raw(b"retry:")
            assert feeds.open == 1
            waited = len(reads.ended)
        await until(lambda: feeds.open == 0 and len(reads.ended) > waited)
    # the read waiting for events was stopped, not left to run out its wait
    assert reads.ended[waited:] == ["cancelled"]


async def test_a_feed_ends_when_the_app_is_stopping(
    watched: FastAPI, reads: Reads, stack: Stack, workspace: str
) -> None:
    async with served(watched) as url, opened(url, workspace) as feed:
        await append(stack, workspace, "s", "Noted")
        await feed.events(1)
        waited = len(reads.ended)
        watched.state.feeds.stopping.set()
        await feed.to_the_end()  # a clean end: a dropped connection would raise
    assert watched.state.feeds.open == 0
    assert reads.ended[waited:] == ["cancelled"]


async def test_an_idle_feed_sends_keep_alive_comments(
    app: FastAPI, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "KEEP_ALIVE_SECONDS", 0.05)
    async with served(app) as url, opened(url, workspace) as feed:
        await feed.until_raw(b"\n\n: keep-alive\n\n: keep-alive\n\n")


async def test_feeds_past_the_limit_are_refused_with_503(app: FastAPI, workspace: str) -> None:
    app.state.feeds.limit = 1
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=HANG_GUARD) as c:
        async with opened(url, workspace) as feed:
            await feed.until_raw(b"retry:")
            async with asyncio.timeout(HANG_GUARD):  # a feed that streams would never end
                refused = await c.get("/v1/log/feed", headers={"X-Workspace": workspace})
            assert_error(refused, 503, "UNAVAILABLE")
            assert refused.headers["retry-after"] == "1"
        await until(lambda: app.state.feeds.open == 0)
        async with opened(url, workspace) as feed:  # the place is free again
            await feed.until_raw(b"retry:")


class InFlight(Reads):
    """``Reads`` that also counts the ``tail`` calls of each workspace under way at once."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    async def tail(self, after: Any, *args: Any, **kwargs: Any) -> Any:
        for ws in after:
            self.now[ws] += 1
            self.most[ws] = max(self.most[ws], self.now[ws])
        try:
            return await super().tail(after, *args, **kwargs)
        finally:
            for ws in after:
                self.now[ws] -= 1


def small_pages(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> tuple[InFlight, FastAPI]:
    """An app whose feeds read pages of 5 events, whose shared reads keep 2, and whose
    store's reads are watched."""
    monkeypatch.setattr(feed_module, "PAGE", 5)
    monkeypatch.setattr(log_module, "PAGE", 5)
    monkeypatch.setattr(feed_module, "RECENT_PAGES", 2)
    reads = InFlight(stack.store)
    return reads, create_app(
        stack=dataclasses.replace(stack, store=reads), stopping=asyncio.Event()
    )


async def test_the_feeds_of_a_workspace_share_one_read_and_one_far_behind_catches_up(
    stack: Stack, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads, app = small_pages(stack, monkeypatch)
    for n in range(30):
        await append(stack, workspace, f"s{n % 3}", "Noted", n=n)

    async with served(app) as url, contextlib.AsyncExitStack() as feeds:
        near = [await feeds.enter_async_context(opened(url, workspace, {"after": 25}))
                for _ in range(3)]  # fmt: skip
        got = {id(f): [int(m.last_id or 0) for m in await f.events(5)] for f in near}
        for n in range(30, 50):  # pages of the shared read: more than it keeps
            await append(stack, workspace, "s0", "Noted", n=n)
        far = await feeds.enter_async_context(opened(url, workspace, {"after": 0}))
        got[id(far)] = [int(m.last_id or 0) for m in await far.events(50)]
        for f in near:
            got[id(f)] += [int(m.last_id or 0) for m in await f.events(20)]
        await append(stack, workspace, "s1", "Noted", "Noted", n=50)
        for f in [*near, far]:
            got[id(f)] += [int(m.last_id or 0) for m in await f.events(2)]
        assert reads.most[workspace] == 1  # one read of the log at a time, for four feeds

    assert got[id(far)] == list(range(1, 53))
    assert [got[id(f)] for f in near] == [list(range(26, 53))] * 3


async def test_a_feed_the_shared_read_left_behind_reads_on_its_own_then_joins_it_again(
    stack: Stack, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads, app = small_pages(stack, monkeypatch)
    tails = app.state.feeds._tails
    for n in range(12):
        await append(stack, workspace, "s", "Noted", n=n)

    async def run_ahead() -> None:
        """Before the late feed has its last page: the shared read moves on by more pages
        than it keeps, so the late feed finds itself behind them."""
        for n in range(12, 24):
            await append(stack, workspace, "s", "Noted", n=n)
            await until(lambda n=n: tails[workspace].head == n + 1)

    read_log = stack.store.read_log

    async def late_read(*args: Any, **kwargs: Any) -> Any:
        page = await read_log(*args, **kwargs)
        if kwargs.get("after") == 10:
            await run_ahead()
        return page

    async with served(app) as url, opened(url, workspace, {"after": 12}) as ahead:
        await ahead.until_raw(b"retry:")
        await until(lambda: workspace in tails)
        monkeypatch.setattr(reads, "read_log", late_read)
        async with opened(url, workspace) as late:
            got = [int(m.last_id or 0) for m in await late.events(24)]
            await append(stack, workspace, "s", "Noted", n=24)
            got += [int(m.last_id or 0) for m in await late.events(1)]
        assert [int(m.last_id or 0) for m in await ahead.events(13)] == list(range(13, 26))
    assert got == list(range(1, 26))


async def test_feeds_of_more_workspaces_than_the_limit_are_refused_with_503(
    app: FastAPI, workspace: str
) -> None:
    app.state.feeds.workspaces = 1
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=HANG_GUARD) as c:
        async with opened(url, workspace) as feed, opened(url, workspace) as same:
            await feed.until_raw(b"retry:")
            await same.until_raw(b"retry:")  # another feed of the same workspace is served
            async with asyncio.timeout(HANG_GUARD):
                refused = await c.get("/v1/log/feed", headers={"X-Workspace": workspace + "-2"})
            assert_error(refused, 503, "UNAVAILABLE")
        await until(lambda: app.state.feeds.open == 0)
        async with opened(url, workspace + "-2") as feed:  # free again
            await feed.until_raw(b"retry:")


async def test_the_feed_is_documented_as_an_event_stream(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/v1/log/feed"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"200", "400", "503"} <= set(operation["responses"])
    params = {p["name"]: p for p in operation["parameters"]}
    assert {"after", "Last-Event-ID", "stream_prefix", "type", "X-Workspace"} <= set(params)
    assert params["workspace"]["in"] == "query"
    assert "EventSource" in params["workspace"]["description"]


# -- the API process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stopping_the_api_process_ends_its_open_feeds_within_the_drain(
    redis_url: str, stack: Stack, workspace: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.update(STAGELINE_REDIS_URL=redis_url, STAGELINE_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stageline", "api", "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD) as c:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, "the API process exited"
                    if await _healthy(c):
                        break
                    await asyncio.sleep(0.1)
        async with opened(url, workspace) as feed:
            await append(stack, workspace, "s", "Noted")
            await feed.events(1)
            proc.send_signal(signal.SIGTERM)
            await feed.to_the_end()  # a clean end: a connection cut at the drain would raise
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "stageline.stopped" in text and "drain_timeout" not in text, text


async def _healthy(c: httpx.AsyncClient) -> bool:
    try:
        return (await c.get("/healthz")).status_code == 200
    except httpx.HTTPError:
        return False
