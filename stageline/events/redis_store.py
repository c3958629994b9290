"""The Redis ``EventStore``: Lua-scripted atomic appends over Redis Streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import NoScriptError, ResponseError

from stageline.errors import ConcurrencyError, InvalidArgument
from stageline.events import codec, keys
from stageline.events.envelope import ANY, NewEvent, RecordedEvent
from stageline.events.store import (
    MAX_EVENTS_PER_APPEND,
    AppendRequest,
    AppendResult,
    check_append,
)

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "MAX_EVENTS_PER_APPEND",
    "RedisEventStore",
    "connect",
    "retry_policy",
]

_PAGE = 1000


CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 10.0


def retry_policy(kind: type[Retry] = Retry) -> Retry:
    """How stageline's Redis clients retry, so a server restart is ridden out.

    A command that fails with a connection error (server gone, socket missing,
    still loading its AOF) or a timeout is sent again on a new connection after
    growing, jittered pauses, ~4-8 s in all; a longer outage reaches the
    caller, whose own loop (subscriber, scheduler, projector) tries again
    later. Every command stageline sends is safe to repeat: appends drop event
    ids they already hold, XACK/ZADD/XGROUP CREATE are idempotent, a repeated
    XADD of a command is a duplicate the version check absorbs, and a view
    write is guarded by its checkpoint. ``kind`` is a ``Retry`` subclass to
    build the same policy as (e.g. the worker's ``NoRetryOnceCancelled``).
    """
    return kind(EqualJitterBackoff(cap=1.0, base=0.05), retries=10)


def connect(url: str) -> aioredis.Redis:
    """A bytes client for ``url`` (``unix://``, ``redis://``, ``rediss://``) that retries."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        # a half-open connection must fail, not hang a batch forever; every blocking
        # read stageline issues waits at most 2 s (STAGELINE_POLL_MS, projector tails)
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        retry=retry_policy(),
    )


def _script(name: str) -> str:
    return resources.files("stageline.events").joinpath(name).read_text()


class RedisEventStore:
    """Stores every workspace's log in Redis (or FalkorDB, which is Redis plus a module).

    Per workspace: one Redis Stream holding the log (entry id ``0-<position>``)
    and one small hash per stream mapping versions to positions and event ids
    to versions. Appends and stream reads are Lua scripts, so each is atomic and
    a single round trip.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._append = client.register_script(_script("append.lua"))
        self._read = client.register_script(_script("read_stream.lua"))
        self._known_workspaces: set[str] = set()

    @classmethod
    def from_url(cls, url: str) -> RedisEventStore:
        return cls(connect(url))

    async def close(self) -> None:
        await self.client.aclose()

    # -- appends ----------------------------------------------------------------

    @staticmethod
    def _args(request: AppendRequest) -> tuple[list[str], list[Any]]:
        check_append(request)
        args: list[Any] = [request.stream, request.expected_version]
        for event in request.events:
            args.append(event.event_id.bytes)
            args.append(codec.encode(event))
        return [
            keys.stream_key(request.workspace, request.stream),
            keys.log_key(request.workspace),
        ], args

    @staticmethod
    def _result(request: AppendRequest, reply: list[int]) -> AppendResult:
        if reply[0] == 0:
            raise ConcurrencyError(request.stream, request.expected_version, int(reply[1]))
        pairs = reply[3:]
        return AppendResult(
            stream=request.stream,
            version=int(reply[1]),
            versions=[int(v) for v in pairs[0::2]],
            positions=[int(p) for p in pairs[1::2]],
            deduplicated=reply[0] == 2,
        )

    async def _remember(self, workspaces: set[str]) -> None:
        new = workspaces - self._known_workspaces
        if new:
            await self.client.sadd(keys.WORKSPACES, *new)
            self._known_workspaces |= new

    async def append(
        self,
        workspace: str,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int = ANY,
    ) -> AppendResult:
        request = AppendRequest(workspace, stream, events, expected_version)
        script_keys, args = self._args(request)
        await self._remember({workspace})
        reply = await self._append(keys=script_keys, args=args)
        return self._result(request, reply)

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        out: list[AppendResult | Exception] = [None] * len(requests)  # type: ignore[list-item]
        calls: list[tuple[int, list[str], list[Any]]] = []
        for i, request in enumerate(requests):
            try:
                script_keys, args = self._args(request)
            except InvalidArgument as exc:
                out[i] = exc
                continue
            calls.append((i, script_keys, args))
        if not calls:
            return out
        await self._remember({requests[i].workspace for i, _, _ in calls})
        replies = await self._evalsha_many(calls)
        for (i, _, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                out[i] = reply
                continue
            try:
                out[i] = self._result(requests[i], reply)
            except ConcurrencyError as exc:
                out[i] = exc
        return out

    async def _evalsha_many(self, calls: list[tuple[int, list[str], list[Any]]]) -> list[Any]:
        """Run the append script once per call, pipelined, in one round trip.

        EVALSHA straight away: redis-py's pipelined scripts ask SCRIPT EXISTS
        first, a second round trip on every batch. A server that lost its script
        cache (any restart) answers NOSCRIPT without running anything, so those
        calls are simply sent again after loading the script.
        """
        sha = self._append.sha
        pipe = self.client.pipeline(transaction=False)
        for _, script_keys, args in calls:
            pipe.evalsha(sha, len(script_keys), *script_keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [n for n, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.client.script_load(self._append.script)
            again = await self._evalsha_many([calls[n] for n in missing])
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return replies

    # -- reads ------------------------------------------------------------------

    @staticmethod
    def _decode(workspace: str, entry: Any) -> RecordedEvent:
        entry_id, fields = entry
        if isinstance(fields, list):
            fields = dict(zip(fields[0::2], fields[1::2], strict=True))
        return codec.decode(
            fields[b"e"],
            workspace=workspace,
            stream=fields[b"s"].decode(),
            version=int(fields[b"v"]),
            position=int(entry_id.rsplit(b"-", 1)[1]),
            recorded_ms=int(fields[b"t"]),
        )

    async def read_stream(
        self,
        workspace: str,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        if from_version is None:
            first = 2**62 if backwards else 0
        else:
            # forwards from a negative version is from the start, as in every store
            first = from_version if backwards else max(from_version, 0)
        script_keys = [keys.stream_key(workspace, stream), keys.log_key(workspace)]
        while limit is None or len(out) < limit:
            count = _PAGE if limit is None else min(_PAGE, limit - len(out))
            reply = await self._read(keys=script_keys, args=[first, count, 1 if backwards else 0])
            page = [self._decode(workspace, e) for e in reply[1:]]
            out.extend(page)
            if len(page) < count:
                break
            first = page[-1].version + (-1 if backwards else 1)
        return out

    async def stream_version(self, workspace: str, stream: str) -> int:
        n = await self.client.hget(keys.stream_key(workspace, stream), "n")
        return int(n or 0) - 1

    async def read_log(
        self, workspace: str, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        if limit <= 0:
            return []
        entries: Any = await self.client.xrange(
            keys.log_key(workspace), min=f"(0-{max(after, 0)}", max="+", count=limit
        )
        return [self._decode(workspace, e) for e in entries]

    async def tail(
        self, after: Mapping[str, int], *, limit: int = 1000, block_ms: int = 1000
    ) -> dict[str, list[RecordedEvent]]:
        if limit <= 0 or not after:
            return {}
        streams: dict[Any, Any] = {
            keys.log_key(ws): f"0-{max(pos, 0)}" for ws, pos in after.items()
        }
        # XREAD BLOCK 0 would wait forever; and a read must never outwait the socket
        block = min(block_ms, int((SOCKET_TIMEOUT_SECONDS - 1) * 1000)) if block_ms > 0 else None
        reply: Any = await self.client.xread(streams, count=limit, block=block)
        if not reply:
            return {}
        workspaces = {keys.log_key(ws).encode(): ws for ws in after}
        out = {}
        for key, entries in reply:
            ws = workspaces[key]
            out[ws] = [self._decode(ws, e) for e in entries]
        return out

    async def head(self, workspace: str) -> int:
        try:
            info = await self.client.xinfo_stream(keys.log_key(workspace))
        except ResponseError:  # no such key
            return 0
        return int(info["last-generated-id"].rsplit(b"-", 1)[1])

    async def workspaces(self) -> list[str]:
        # the set is written before the append (so no workspace with events is ever
        # missing), hence may name one whose every append failed: keep those with a log
        members: Any = await self.client.smembers(keys.WORKSPACES)
        names = sorted(m.decode() for m in members)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.log_key(name))
        found = await pipe.execute() if names else []
        return [name for name, n in zip(names, found, strict=True) if n]
