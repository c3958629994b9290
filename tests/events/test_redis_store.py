"""Redis-only behaviour of the store, beyond the shared contract."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from test_store_contract import ev, evs, mixed_appends

from stageline.errors import ConcurrencyError, InvalidArgument
from stageline.events import ANY, NO_STREAM, NewEvent, keys
from stageline.events import redis_store as redis_store_module
from stageline.events.redis_store import RedisEventStore, _Call, retry_policy
from stageline.events.store import MAX_EVENTS_PER_APPEND, AppendRequest, AppendResult


@pytest.fixture
async def named(redis_url: str) -> AsyncIterator[RedisEventStore]:
    """A store whose connections carry a name of their own, to count and kill them."""
    client = aioredis.Redis.from_url(redis_url, client_name=f"t-{uuid.uuid4().hex[:12]}")
    store = RedisEventStore(client)
    yield store
    await store.close()


async def connections(observer: RedisEventStore, store: RedisEventStore) -> list[dict[str, str]]:
    """``CLIENT LIST`` entries of ``store``'s connections, as seen from ``observer``."""
    name = store.client.get_connection_kwargs()["client_name"]
    listed: str = (await observer.client.execute_command("CLIENT", "LIST")).decode()
    entries = [dict(f.split("=", 1) for f in line.split()) for line in listed.splitlines()]
    return [e for e in entries if e.get("name") == name]


def resp_array(command: bytes) -> list[bytes]:
    """The bulk strings of one packed RESP command."""
    head, _, rest = command.partition(b"\r\n")
    out = []
    for _ in range(int(head[1:])):
        size, _, rest = rest.partition(b"\r\n")
        n = int(size[1:])
        out.append(rest[:n])
        rest = rest[n + 2 :]
    assert rest == b""
    return out


def test_only_a_call_that_brings_recorded_times_carries_them() -> None:
    # the ARGV layout append.lua's header describes: ARGV[1] R, or -R and R times
    at = datetime(2021, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    a, b = [ev(0)], evs(2, start=1)

    def argv(*times: datetime | None) -> list[bytes]:
        call = _Call("w")
        call.add(0, AppendRequest("w", "s", a, NO_STREAM, recorded_at=times[0]))
        call.add(1, AppendRequest("w", "t", b, recorded_at=times[1]))
        parts = resp_array(call.pack("sha"))
        assert parts[:3] == [b"EVALSHA", b"sha", b"3"]  # the log, s, t
        return parts[6:]

    plain = argv(None, None)
    assert plain[:4] == [b"2", b"s", b"-1", b"1"]
    assert len(plain) == 1 + (3 + 2 * 1 + 2) + (3 + 2 * 2 + 2)
    assert argv(None, at) == [b"-2", b"", b"1614834367891", *plain[1:]]
    assert argv(at, at) == [b"-2", b"1614834367891", b"1614834367891", *plain[1:]]


async def test_batch_appends_survive_a_flushed_script_cache(
    redis_store: RedisEventStore, workspace: str
) -> None:
    # every Redis restart empties the script cache: EVALSHA answers NOSCRIPT
    await redis_store.client.script_flush()
    requests = [
        AppendRequest(workspace, f"s{i}", [NewEvent(type="A", data={"i": i})]) for i in range(3)
    ]
    results = await redis_store.append_batch(requests)
    assert all(isinstance(r, AppendResult) for r in results), results
    assert await redis_store.head(workspace) == 3
    again = await redis_store.append_batch(requests)  # and a retry is still deduplicated
    assert all(isinstance(r, AppendResult) and r.deduplicated for r in again)
    assert await redis_store.head(workspace) == 3


async def test_a_flushed_script_cache_under_a_batch_of_many_calls(
    redis_store: RedisEventStore, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # several script calls over two workspaces, with clashes, retries and bad requests
    monkeypatch.setattr(redis_store_module, "EVENTS_PER_CALL", 3)
    expected = await mixed_appends(redis_store, f"{workspace}seq", batched=False)
    await redis_store.client.script_flush()
    assert await mixed_appends(redis_store, workspace, batched=True) == expected
    await redis_store.client.script_flush()
    single = await redis_store.append(workspace, "after-flush", [ev()], NO_STREAM)
    assert single.versions == [0]


@pytest.mark.parametrize(("per_call", "bytes_per_call"), [(1, 1 << 30), (5, 1 << 30), (1000, 1)])
async def test_batches_split_into_many_script_calls_keep_their_order(
    redis_store: RedisEventStore,
    workspace: str,
    monkeypatch: pytest.MonkeyPatch,
    per_call: int,
    bytes_per_call: int,
) -> None:
    monkeypatch.setattr(redis_store_module, "EVENTS_PER_CALL", per_call)
    monkeypatch.setattr(redis_store_module, "BYTES_PER_CALL", bytes_per_call)
    expected = await mixed_appends(redis_store, f"{workspace}seq", batched=False)
    assert await mixed_appends(redis_store, workspace, batched=True) == expected
    # a request bigger than a call goes in one call of its own, whole
    size = min(per_call + 2, MAX_EVENTS_PER_APPEND)
    big = await redis_store.append_batch(
        [
            AppendRequest(workspace, "big", [ev(0)], NO_STREAM),
            AppendRequest(workspace, "big", evs(size, start=1), 0),
            AppendRequest(workspace, "big", [ev(-1)], size),
        ]
    )
    assert [r.versions for r in big if isinstance(r, AppendResult)] == [
        [0],
        list(range(1, size + 1)),
        [size + 1],
    ]


async def test_a_batch_is_a_few_script_calls_per_workspace(
    redis_store: RedisEventStore, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = f"{workspace}x"
    await redis_store.append_batch(
        [AppendRequest(workspace, "s", [ev()]), AppendRequest(other, "s", [ev()])]
    )
    sent: list[bytes] = []
    send = AbstractConnection.send_packed_command

    async def spy(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        await send(self, command, check_health)

    async def script_calls(requests: list[AppendRequest]) -> int:
        sent.clear()
        results = await redis_store.append_batch(requests)
        assert all(isinstance(r, AppendResult) for r in results), results
        return sum(command.count(b"EVALSHA") for command in sent)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    batch = (
        [AppendRequest(workspace, f"run-{i}", [ev(i)], NO_STREAM) for i in range(500)]
        + [AppendRequest(workspace, "s", [ev(n)], n - 1) for n in range(1, 300)]
        + [AppendRequest(other, f"run-{i}", evs(12), ANY) for i in range(10)]
    )
    # the first calls are small (the server starts while the rest is encoded), then grow:
    # 100, 200, 400 and 99 events of the first workspace, 120 of the other
    assert await script_calls(batch) == 5
    assert await redis_store.head(workspace) == 1 + 500 + 299
    assert await redis_store.head(other) == 1 + 120
    monkeypatch.setattr(redis_store_module, "FIRST_CALL_EVENTS", 1000)
    again = [AppendRequest(r.workspace, f"again-{r.stream}", r.events) for r in batch]
    assert await script_calls(again) == 2


async def test_a_lost_connection_is_retried(
    named: RedisEventStore, redis_store: RedisEventStore, workspace: str
) -> None:
    await named.append(workspace, "s", [ev()])
    for entry in await connections(redis_store, named):
        await redis_store.client.execute_command("CLIENT", "KILL", "ID", entry["id"])
    results = await named.append_batch(
        [AppendRequest(workspace, "s", [ev(1)], 0), AppendRequest(workspace, "t", [ev(2)])]
    )
    assert [r.positions for r in results if isinstance(r, AppendResult)] == [[2], [3]]


async def test_an_event_that_breaks_mid_batch_is_its_own_requests_error(
    redis_store: RedisEventStore, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # not an InvalidEvent: an event_id that is no UUID fails as a programming error
    # would, after the call before it was sent; the requests after it go on
    monkeypatch.setattr(redis_store_module, "EVENTS_PER_CALL", 1)
    broken = NewEvent(type="A", data={}, event_id="not-a-uuid")  # type: ignore[arg-type]
    results = await redis_store.append_batch(
        [
            AppendRequest(workspace, "s", [ev(0)], NO_STREAM),
            AppendRequest(workspace, "t", [broken]),
            AppendRequest(workspace, "u", [ev(1)], NO_STREAM),
        ]
    )
    assert isinstance(results[1], AttributeError)
    assert [r.stream for r in results if isinstance(r, AppendResult)] == ["s", "u"]
    assert not any(r.deduplicated for r in results if isinstance(r, AppendResult))
    assert await redis_store.stream_version(workspace, "t") == -1
    # and the pool's connection answers the next command with its own reply
    result = await redis_store.append(workspace, "v", [ev(2)], NO_STREAM)
    assert (result.stream, result.versions, result.positions) == ("v", [0], [3])
    with pytest.raises(AttributeError):  # one append alone raises it
        await redis_store.append(workspace, "t", [broken])


async def test_a_retried_batch_answers_with_the_original_places(
    redis_store: RedisEventStore, workspace: str
) -> None:
    first = [AppendRequest(workspace, f"run-{i}", evs(12), NO_STREAM) for i in range(20)]
    landed = await redis_store.append_batch(first)
    await redis_store.append_batch([AppendRequest(workspace, "run-3", [ev(-1)], 11)])
    again = await redis_store.append_batch(first)

    assert all(isinstance(r, AppendResult) and r.deduplicated for r in again)
    for before, after in zip(landed, again, strict=True):
        assert isinstance(before, AppendResult) and isinstance(after, AppendResult)
        assert (after.versions, after.positions, after.version) == (
            before.versions,
            before.positions,
            before.version,
        )
    with pytest.raises(ConcurrencyError):
        await redis_store.append(workspace, "run-3", [ev()], 11)
    with pytest.raises(InvalidArgument):
        await redis_store.append(workspace, "run-3", [])


async def test_a_batch_lists_only_workspaces_an_append_can_name(
    redis_store: RedisEventStore, workspace: str
) -> None:
    results = await redis_store.append_batch(
        [AppendRequest("bad workspace", "s", [ev()]), AppendRequest(workspace, "s", [ev()])]
    )
    assert isinstance(results[0], InvalidArgument) and isinstance(results[1], AppendResult)
    members = await redis_store.client.smembers(keys.WORKSPACES)
    assert workspace.encode() in members
    assert b"bad workspace" not in members


@pytest.mark.parametrize("batch", [False, True], ids=["append", "append_batch"])
async def test_a_workspace_whose_listing_was_lost_with_its_log_is_listed_again(
    redis_store: RedisEventStore, redis_url: str, workspace: str, batch: bool
) -> None:
    async def append() -> None:
        if batch:
            [result] = await redis_store.append_batch([AppendRequest(workspace, "s", [ev()])])
            assert isinstance(result, AppendResult)
        else:
            await redis_store.append(workspace, "s", [ev()])

    await append()
    # the server lost its last second of writes (appendfsync everysec): the listing went,
    # and with it everything written after it, the log too
    await redis_store.client.srem(keys.WORKSPACES, workspace)
    await redis_store.client.delete(keys.log_key(workspace), keys.stream_key(workspace, "s"))
    follower = RedisEventStore.from_url(redis_url)
    try:
        assert workspace not in await follower.workspaces()
        await append()  # by the store that listed it before the loss
        assert workspace in await follower.workspaces()
        # and a projector following new workspaces hears of it at once
        assert workspace in await follower.tail({}, block_ms=1000, new_workspaces=True)
    finally:
        await follower.close()


async def test_a_connection_error_is_sent_again_and_a_timeout_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a server that takes a command and does not answer costs the socket timeout each
    # time: sent ten times, an API request waited over 100 s for its 503
    monkeypatch.setattr(EqualJitterBackoff, "compute", lambda self, failures: 0)
    for error, sent in ((RedisConnectionError("gone"), 11), (RedisTimeoutError("hung"), 1)):
        calls = 0

        async def command(error: Exception = error) -> None:
            nonlocal calls
            calls += 1
            raise error

        async def failed(error: Exception) -> None:
            pass

        with pytest.raises(type(error)):
            await retry_policy().call_with_retry(command, failed)
        assert calls == sent, type(error)
