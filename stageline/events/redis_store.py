"""The Redis ``EventStore``: Lua-scripted atomic appends over Redis Streams."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from stageline.errors import ConcurrencyError, EventIdReused, PartialRetry
from stageline.events import codec, keys
from stageline.events.envelope import ANY, NewEvent, RecordedEvent
from stageline.events.pool import WaitingPool
from stageline.events.store import (
    MAX_EVENTS_PER_APPEND,
    AppendRequest,
    AppendResult,
    Outbox,
    check_repeat,
    check_request,
    epoch_ms,
)

__all__ = [
    "BYTES_PER_CALL",
    "CONNECT_TIMEOUT_SECONDS",
    "EVENTS_PER_CALL",
    "FIRST_CALL_EVENTS",
    "MAX_EVENTS_PER_APPEND",
    "SOCKET_TIMEOUT_SECONDS",
    "Claim",
    "RedisEventStore",
    "connect",
    "failure",
    "retried_errors",
    "retry_policy",
    "same_server",
]

Claim = tuple[str, bytes, int]
"""A key to set to a value for a ttl in seconds, unless it is set (``claim_many``)."""

_PAGE = 1000


CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 10.0


T = TypeVar("T")

_retried: ContextVar[list[Exception] | None] = ContextVar("stageline_retried", default=None)


class NotingRetry(Retry):
    """redis-py's ``Retry``, which also notes each error it retries in the list of the
    caller's ``retried_errors()``, if one is open."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        noted = _retried.get()
        if noted is None:
            return await super().call_with_retry(do, fail, is_retryable, with_failure_count)

        async def failed(error: Exception, *failures: int) -> Any:
            noted.append(error)
            return await fail(error, *failures)

        return await super().call_with_retry(do, failed, is_retryable, with_failure_count)


@contextlib.contextmanager
def retried_errors() -> Iterator[list[Exception]]:
    """The errors stageline's clients retry while this is open, in this task and those it
    starts: a caller that stops waiting (a health check, a scrape) can say why the server
    did not answer (``failure``), where its own timeout says only that it did not."""
    noted: list[Exception] = []
    token = _retried.set(noted)
    try:
        yield noted
    finally:
        _retried.reset(token)


def failure(exc: BaseException, retried: Sequence[Exception], timeout: float) -> str:
    """What made a call fail with ``exc``: the last error ``retried`` if it gave up
    waiting (a ``TimeoutError`` after ``timeout`` seconds) while its client retried it."""
    if isinstance(exc, TimeoutError):
        if retried:
            last = retried[-1]
            return f"{type(last).__name__}: {last} (retrying it when {timeout:g}s ran out)"
        return f"timed out after {timeout:g}s"
    return f"{type(exc).__name__}: {exc}"


def retry_policy(kind: type[Retry] = NotingRetry) -> Retry:
    """How stageline's Redis clients retry, so a server restart is ridden out.

    A command that fails with a connection error (server gone, socket missing,
    still loading its AOF) is sent again on a new connection after growing,
    jittered pauses, ~4-8 s in all; a longer outage reaches the caller, whose
    own loop (subscriber, scheduler, projector) tries again later. Every command
    stageline sends is safe to repeat: appends drop event ids they already hold,
    XACK/ZADD/XGROUP CREATE are idempotent, a repeated XADD of a command is a
    duplicate the version check absorbs, and a view write is guarded by its
    checkpoint. A timeout is not sent again: a server that takes a command and
    does not answer (stopped, hung, a half-open connection) would take the socket
    timeout each time, and an API request waited 10 of them (over 100 s) before
    its 503. ``kind`` is a ``Retry`` subclass to build the same policy as (e.g.
    the worker's ``NoRetryOnceCancelled``).
    """
    return kind(
        EqualJitterBackoff(cap=1.0, base=0.05),
        retries=10,
        supported_errors=(RedisConnectionError,),
    )


def connect(url: str) -> aioredis.Redis:
    """A bytes client for ``url`` (``unix://``, ``redis://``, ``rediss://``) that retries,
    and whose commands wait for a connection when all of its pool's are busy."""
    pool = WaitingPool.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        # a half-open connection must fail, not hang a batch forever; every blocking
        # read stageline issues waits at most 2 s (STAGELINE_POLL_MS, projector tails)
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        retry=retry_policy(),
    )
    return aioredis.Redis.from_pool(pool)


def same_server(a: aioredis.Redis, b: aioredis.Redis) -> bool:
    """Whether two clients reach the same server and database as the same user, so one
    script can write for both."""

    def where(client: aioredis.Redis) -> tuple[Any, ...]:
        kw = client.connection_pool.connection_kwargs
        at = kw.get("path"), kw.get("host"), kw.get("port", 6379), int(kw.get("db") or 0)
        return *at, kw.get("username")

    return where(a) == where(b)


def _script(name: str) -> str:
    return resources.files("stageline.events").joinpath(name).read_text()


EVENTS_PER_CALL = 1000
"""Most events one run of the append script takes (a few ms of server time)."""
FIRST_CALL_EVENTS = 100
"""Most events the first call of a batch takes; each next may take twice as many as the
one before, up to ``EVENTS_PER_CALL``: the server starts on the first while the client
encodes the next."""
BYTES_PER_CALL = 4 << 20
"""A run of the append script takes no more requests once its arguments pass this size."""


_FIELDS = [b"s", b"v", b"t", b"e"]
"""A log entry's fields: stream, version, recorded time (ms), the encoded event."""


def _in_order(fields: list[bytes]) -> list[bytes]:
    """A log entry's fields in ``_FIELDS`` order, whatever order they came in."""
    named = dict(zip(fields[0::2], fields[1::2], strict=True))
    return [x for k in _FIELDS for x in (k, named[k])]


log = structlog.get_logger("stageline.events")


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _Call:
    """One run of the append script: requests of one workspace, applied in order.

    The command is packed as requests are added: redis-py's packer is pure
    Python, and an append has two arguments per event.
    """

    __slots__ = (
        "args", "count", "events", "held", "indexes", "keys", "outboxes", "requests", "size",
        "started", "times", "workspace",
    )  # fmt: skip

    def __init__(self, workspace: str) -> None:
        """Raises ``InvalidArgument`` for a bad workspace name."""
        keys.check_workspace(workspace, internal=True)
        self.workspace = workspace
        self.keys = [_bulk(keys.log_key(workspace).encode())]
        self.args: list[bytes] = []  # the script's ARGV, packed
        self.count = 0  # of ARGV
        self.requests: list[AppendRequest] = []
        self.indexes: list[int] = []  # of each request in its batch
        self.outboxes: dict[str, int] = {}  # the streams outboxes write to -> their j
        self.events = 0
        self.size = 0
        self.started = False
        """Whether one of its requests wrote the log's first entry (position 1)."""
        self.times: dict[int, bytes] = {}
        """The recorded time (ms) of each request, by its place in this call, that brings one."""
        self.held: dict[int, list[tuple[int, int]]] = {}
        """Of each ``PartialRetry`` by its request's index in the batch, the events the
        stream holds: ``(index in the request, log position)``."""

    def add(self, index: int, request: AppendRequest) -> None:
        """Check and encode ``request`` into this call, or raise ``InvalidArgument`` adding nothing."""
        check_request(request)
        events = request.events
        args = self.args
        added = len(args)
        stream = request.stream.encode()
        expected = b"%d" % request.expected_version
        count = b"%d" % (-len(events) if request.whole else len(events))
        args.append(
            b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
            % (len(stream), stream, len(expected), expected, len(count), count)
        )
        size = 0
        try:
            for event in events:
                blob = codec.encode(event)
                size += len(blob)
                args.append(
                    b"$18\r\ni:%b\r\n$%d\r\n%b\r\n" % (event.event_id.bytes, len(blob), blob)
                )
            tail, extra = self._outbox(request.outbox)
        except BaseException:
            del args[added:]
            raise
        args.append(tail)
        if request.recorded_at is not None:
            self.times[len(self.requests)] = b"%d" % epoch_ms(request.recorded_at)
        self.keys.append(_bulk(keys.stream_key(self.workspace, request.stream).encode()))
        self.count += 3 + 2 * len(events) + extra
        self.requests.append(request)
        self.indexes.append(index)
        self.events += len(events)
        self.size += size + len(tail)

    def _outbox(self, outbox: Outbox | None) -> tuple[bytes, int]:
        """A request's outbox arguments (see append.lua), packed, and how many there are."""
        if outbox is None:
            return b"$1\r\n0\r\n$1\r\n0\r\n", 2
        slots = self.outboxes
        out = [_bulk(b"%d" % len(outbox.entries))]
        if outbox.entries:
            out.append(_bulk(b"%d" % outbox.maxlen))
            for key, payload in outbox.entries:
                out += (_bulk(b"%d" % slots.setdefault(key, len(slots) + 1)), _bulk(payload))
        if outbox.ack is None:
            out.append(_bulk(b"0"))
        else:
            key, group, entry_id = outbox.ack
            out += (
                _bulk(b"%d" % slots.setdefault(key, len(slots) + 1)),
                _bulk(group.encode()),
                _bulk(entry_id),
            )
        return b"".join(out), len(out)

    def pack(self, sha: str) -> bytes:
        extra = [_bulk(key.encode()) for key in self.outboxes]
        nkeys = len(self.keys) + len(extra)
        count = len(self.requests)
        times: list[bytes] = []
        if self.times:  # -R, then each request's time ('' for the server's): see append.lua
            times = [_bulk(self.times.get(i, b"")) for i in range(count)]
            count = -count
        return b"".join(
            [
                b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + nkeys + len(times) + self.count),
                _bulk(sha.encode()),
                _bulk(b"%d" % nkeys),
                *self.keys,
                *extra,
                _bulk(b"%d" % count),
                *times,
                *self.args,
            ]
        )

    def results(self, reply: list[int] | Exception, out: list[AppendResult | Exception]) -> None:
        """Each request's outcome into its place in ``out``, from the script's reply (see
        append.lua) or the error the whole call met."""
        if isinstance(reply, Exception):
            for i in self.indexes:
                out[i] = reply
            return
        at = 0
        for i, request in zip(self.indexes, self.requests, strict=True):
            status = reply[at]
            if status == 0:
                out[i] = ConcurrencyError(request.stream, request.expected_version, reply[at + 1])
                at += 2
            elif status == 4:
                end = at + 3 + 3 * reply[at + 2]
                index, version = reply[at + 3], reply[at + 4]
                out[i] = PartialRetry(
                    request.stream,
                    reply[at + 1],
                    index=index,
                    event_id=str(request.events[index].event_id),
                    at=version,
                )
                self.held[i] = list(
                    zip(reply[at + 3 : end : 3], reply[at + 5 : end : 3], strict=True)
                )
                at = end
            elif status == 1:
                last, first = reply[at + 1], reply[at + 2]
                count = len(request.events)
                if first == 1:
                    self.started = True
                out[i] = AppendResult(
                    stream=request.stream,
                    version=last,
                    versions=list(range(last - count + 1, last + 1)),
                    positions=list(range(first, first + count)),
                    deduplicated=False,
                )
                at += 3
            else:
                end = at + 2 + 2 * len(request.events)
                out[i] = AppendResult(
                    stream=request.stream,
                    version=reply[at + 1],
                    versions=reply[at + 2 : end : 2],
                    positions=reply[at + 3 : end : 2],
                    deduplicated=status == 2,
                )
                at = end


def _calls(
    requests: Sequence[AppendRequest], out: list[AppendResult | Exception]
) -> Iterator[_Call]:
    """The script calls that apply ``requests``, each as soon as it is full.

    A workspace's requests go in order into its calls, and its calls come in
    order; a request that cannot be stored gets its error (``InvalidArgument``,
    or whatever else encoding it raised) in ``out`` instead.
    """
    filling: dict[str, _Call] = {}
    limit = min(FIRST_CALL_EVENTS, EVENTS_PER_CALL)
    for i, request in enumerate(requests):
        workspace = request.workspace
        call = filling.get(workspace)
        if call is not None and (
            call.events + len(request.events) > limit or call.size > BYTES_PER_CALL
        ):
            yield call
            call = None
            limit = min(2 * limit, EVENTS_PER_CALL)
        try:
            if call is None:
                call = filling[workspace] = _Call(workspace)
            call.add(i, request)
        # the request's own, however unforeseen (an event id that is no UUID): the calls
        # before it may have been sent already, and the requests after it go on
        except Exception as exc:
            out[i] = exc
    for call in filling.values():
        if call.requests:
            yield call


async def _exchange(
    conn: AbstractConnection, sha: str, calls: Iterator[_Call], sent: list[_Call]
) -> list[Any]:
    """Send every call of ``sent`` then of ``calls`` (moved to ``sent``), then read the replies.

    Each call is written as soon as it is packed, so the server runs it while
    the next is encoded. An error reply is returned in its place.
    """
    try:
        for call in sent:  # a try again on a new connection
            await conn.send_packed_command(call.pack(sha))
        for call in calls:
            sent.append(call)
            await conn.send_packed_command(call.pack(sha))
        replies: list[Any] = []
        for _ in sent:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        # e.g. an event that fails to encode with other than InvalidArgument: the
        # replies of the calls sent are never read, so the connection is unusable
        await conn.disconnect(nowait=True)
        raise


class RedisEventStore:
    """Stores every workspace's log in Redis (or FalkorDB, which is Redis plus a module).

    Per workspace: one Redis Stream holding the log (entry id ``0-<position>``)
    and one small hash per stream mapping versions to positions and event ids
    to versions. Appends and stream reads are Lua scripts, so each is atomic and
    a single round trip. A batch of appends runs the append script once per
    workspace (a few times for a big batch), each run applying its requests one
    after another, each request with its own version check and idempotency.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        # the log's reads on the same connections, their replies as the server sent them:
        # redis-py would turn each entry's fields into a dict, which decoding does not need
        self._entries = aioredis.Redis(connection_pool=client.connection_pool)
        for command in ("XRANGE", "XREAD"):
            self._entries.set_response_callback(command, _as_sent)
        self._append = client.register_script(_script("append.lua"))
        self._read = client.register_script(_script("read_stream.lua"))
        self._release = client.register_script(_script("release.lua"))
        self._known_workspaces: set[str] = set()
        self._added_after: bytes | None = None
        """The last ``WORKSPACES_ADDED`` entry this store has seen (None: not read yet)."""
        self._unannounced: set[str] = set()
        """Workspaces this store listed first whose first append has not landed yet."""

    @classmethod
    def from_url(cls, url: str) -> RedisEventStore:
        return cls(connect(url))

    async def close(self) -> None:
        await self.client.aclose()

    # -- appends ----------------------------------------------------------------

    async def append(
        self,
        workspace: str,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int = ANY,
        *,
        whole: bool = False,
    ) -> AppendResult:
        call = _Call(workspace)
        call.add(0, AppendRequest(workspace, stream, events, expected_version, whole=whole))
        listed = await self._remember({workspace})
        _, [reply] = await self._run(iter([call]))
        out: list[AppendResult | Exception] = [None]  # type: ignore[list-item]
        call.results(reply, out)
        await self._check_repeats([call], out)
        if isinstance(out[0], Exception):
            raise out[0]
        if call.started and not listed:
            await self._relist({workspace})
        if self._unannounced:
            await self._announce({workspace})
        return out[0]

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        out: list[AppendResult | Exception] = [None] * len(requests)  # type: ignore[list-item]
        if not requests:
            return out
        listed = await self._remember({r.workspace for r in requests})
        calls, replies = await self._run(_calls(requests, out))
        for call, reply in zip(calls, replies, strict=True):
            call.results(reply, out)
        await self._check_repeats(calls, out)
        started = {call.workspace for call in calls if call.started}
        if started - listed:
            await self._relist(started - listed)
        if self._unannounced:
            written = {
                r.workspace
                for r, o in zip(requests, out, strict=True)
                if not isinstance(o, Exception)
            }
            await self._announce(written)
        return out

    async def _check_repeats(
        self, calls: Sequence[_Call], out: list[AppendResult | Exception]
    ) -> None:
        """Of each whole request that repeated events the stream holds (all of its events,
        or some: ``PartialRetry``), turn the outcome into ``EventIdReused`` if one is
        another event. One round trip for them all, none when there is none: the appends
        of stages and imports are never whole."""
        repeats: list[tuple[int, AppendRequest, list[tuple[int, int]]]] = []
        for call in calls:
            for n, request in zip(call.indexes, call.requests, strict=True):
                result = out[n]
                if not request.whole:
                    continue
                if isinstance(result, AppendResult) and result.deduplicated:
                    repeats.append((n, request, list(enumerate(result.positions))))
                elif n in call.held:
                    repeats.append((n, request, call.held[n]))
        if not repeats:
            return
        pipe = self._entries.pipeline(transaction=False)
        for _, request, held in repeats:
            log_key = keys.log_key(request.workspace)
            for _, position in held:
                pipe.xrange(log_key, min=f"0-{position}", max=f"0-{position}")
        try:
            found: list[Any] = await pipe.execute()
        except Exception as exc:  # not known to be a retry: no answer yet
            for n, _, _ in repeats:
                out[n] = exc
            return
        at = 0
        for n, request, held in repeats:
            pages = found[at : at + len(held)]
            at += len(held)
            stored = self._decode(request.workspace, [e for page in pages for e in page])
            try:
                check_repeat(request, zip([i for i, _ in held], stored, strict=True))
            except EventIdReused as exc:
                out[n] = exc

    async def _remember(self, workspaces: set[str]) -> set[str]:
        """List the workspaces this store has not listed yet, and return them; those no store
        had listed wait in ``_unannounced`` for their first append to land."""
        # names no append can use are never listed
        new = sorted(
            ws for ws in workspaces - self._known_workspaces if keys.is_workspace(ws, internal=True)
        )
        if not new:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for ws in new:
            pipe.sadd(keys.WORKSPACES, ws)
        added = await pipe.execute()
        self._known_workspaces.update(new)
        self._unannounced.update(ws for ws, n in zip(new, added, strict=True) if n)
        return set(new)

    async def _relist(self, workspaces: set[str]) -> None:
        """List again workspaces this store listed before whose log an append just started.

        A log starts over only when the server lost it, and the listing, written
        before the log, was lost with it (the last second of writes under
        ``appendfsync everysec``, a restart without persistence, ``FLUSHALL``):
        listed once per process, the workspace would stay unlisted, and unprojected,
        for good.
        """
        self._known_workspaces -= workspaces
        try:
            await self._remember(workspaces)
        except Exception as exc:  # the append landed: not a failure; the next append lists them
            log.warning(
                "store.relist_failed",
                workspaces=sorted(workspaces),
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _announce(self, written: set[str]) -> None:
        """Tell ``tail(new_workspaces=True)`` of the workspaces in ``written`` (appended to)
        that are waiting for it: they just got their first events.

        Best effort: the events are written, and a follower that misses it lists them
        by its next scan.
        """
        workspaces = self._unannounced & written
        if not workspaces:
            return
        self._unannounced -= workspaces
        pipe = self.client.pipeline(transaction=False)
        for ws in sorted(workspaces):
            pipe.xadd(
                keys.WORKSPACES_ADDED,
                {"w": ws},
                maxlen=keys.WORKSPACES_ADDED_MAXLEN,
                approximate=True,
            )
        try:
            await pipe.execute()
        except Exception as exc:
            log.warning("store.announce_failed", workspaces=sorted(workspaces), error=repr(exc))

    async def _run(self, calls: Iterator[_Call]) -> tuple[list[_Call], list[Any]]:
        """Run the append script once per call, in one round trip: the calls and their replies.

        EVALSHA straight away, without asking SCRIPT EXISTS first: a server that
        lost its script cache (any restart) answers NOSCRIPT without running
        anything, so those calls are simply sent again after loading the script.
        An error reply is returned in its call's place.
        """
        sent, replies = await self._round_trip(calls)
        missing = [n for n, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.client.script_load(self._append.script)
            _, again = await self._run(iter([sent[n] for n in missing]))
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return sent, replies

    async def _round_trip(self, calls: Iterator[_Call]) -> tuple[list[_Call], list[Any]]:
        """``_exchange`` on a pooled connection; a lost one is retried as redis-py retries a
        pipeline (every append is safe to repeat)."""
        sha = self._append.sha
        sent: list[_Call] = []
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            replies = await conn.retry.call_with_retry(
                lambda: _exchange(conn, sha, calls, sent), lambda _error, *_: conn.disconnect()
            )
        finally:
            await pool.release(conn)
        return sent, replies

    # -- reads ------------------------------------------------------------------

    @staticmethod
    def _decode(workspace: str, entries: Sequence[Any]) -> list[RecordedEvent]:
        """Log entries as the server sends them: ``[id, [b"s", stream, b"v", version, ...]]``.

        Their events are decoded by one call, and the entries recorded in the same
        millisecond (most of a busy log's) share one ``recorded_at``.
        """
        rows = [f if f[0::2] == _FIELDS else _in_order(f) for _, f in entries]
        stored = codec.decode_many([f[7] for f in rows])
        out = []
        times: dict[bytes, datetime] = {}
        for (entry_id, _), f, s in zip(entries, rows, stored, strict=True):
            recorded_at = times.get(f[5])
            if recorded_at is None:
                recorded_at = times[f[5]] = datetime.fromtimestamp(int(f[5]) / 1000, UTC)
            out.append(
                RecordedEvent(
                    event_id=s.event_id,
                    type=s.type,
                    schema_version=s.schema_version,
                    stream=f[1].decode(),
                    version=int(f[3]),
                    position=int(entry_id[2:]),  # ids are 0-<position>
                    workspace=workspace,
                    occurred_at=s.occurred_at,
                    recorded_at=recorded_at,
                    correlation_id=s.correlation_id,
                    causation_id=s.causation_id,
                    data=s.data,
                )
            )
        return out

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
            page = self._decode(workspace, reply[1:])
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
        entries: Any = await self._entries.xrange(
            keys.log_key(workspace), min=f"(0-{max(after, 0)}", max="+", count=limit
        )
        return self._decode(workspace, entries)

    async def tail(
        self,
        after: Mapping[str, int],
        *,
        limit: int = 1000,
        block_ms: int = 1000,
        new_workspaces: bool = False,
    ) -> dict[str, list[RecordedEvent]]:
        if limit <= 0 or not (after or new_workspaces):
            return {}
        streams: dict[Any, Any] = {
            keys.log_key(ws): f"0-{max(pos, 0)}" for ws, pos in after.items()
        }
        workspaces = {keys.log_key(ws).encode(): ws for ws in after}
        added = keys.WORKSPACES_ADDED.encode()
        # XREAD BLOCK 0 would wait forever; and a read must never outwait the socket
        block = min(block_ms, int((SOCKET_TIMEOUT_SECONDS - 1) * 1000)) if block_ms > 0 else None
        deadline = time.monotonic() + (block or 0) / 1000
        out: dict[str, list[RecordedEvent]] = {}
        while True:
            if new_workspaces:
                streams[keys.WORKSPACES_ADDED] = await self._added_cursor()
            reply: Any = await self._entries.xread(streams, count=limit, block=block)
            # a map of key to entries (RESP3), or a list of [key, entries] pairs (RESP2)
            for key, entries in (reply.items() if isinstance(reply, dict) else reply) or ():
                if key == added:
                    self._added_after = entries[-1][0]
                    for _, fields in entries:
                        ws = dict(zip(fields[0::2], fields[1::2], strict=True))[b"w"].decode()
                        if ws not in after:
                            out.setdefault(ws, [])
                else:
                    ws = workspaces[key]
                    out[ws] = self._decode(ws, entries)
            left = deadline - time.monotonic()
            if out or not reply or block is None or left <= 0:
                return out
            block = max(int(left * 1000), 1)  # woken by workspaces it reads already: wait on

    async def _added_cursor(self) -> bytes:
        """Where this store reads ``WORKSPACES_ADDED`` from: first, after its last entry."""
        if self._added_after is None:
            last: Any = await self._entries.xrevrange(keys.WORKSPACES_ADDED, count=1)
            if self._added_after is None:  # no other call set it meanwhile
                self._added_after = last[0][0] if last else b"0-0"
        return self._added_after

    async def claim_many(self, claims: Sequence[Claim]) -> list[bytes | Exception | None]:
        """Set each claim's key to its value for its ttl (seconds) unless the key is set, one
        command a claim, all in one round trip: per claim, ``None`` if this call set it,
        the value it holds otherwise, or the error the server answered that command."""
        if len(claims) == 1:  # alone, as a command: a pipeline costs more
            [(key, value, ttl)] = claims
            held: Any = await self.client.set(key, value, ex=ttl, nx=True, get=True)
            return [held if isinstance(held, bytes) else None]
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl in claims:
            pipe.set(key, value, ex=ttl, nx=True, get=True)
        replies = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, bytes | Exception) else None for r in replies]

    async def release(
        self,
        key: str,
        value: bytes,
        workspace: str,
        stream: str,
        event_ids: Sequence[uuid.UUID],
    ) -> bool:
        """Delete ``key`` (set by ``claim``) if it still holds ``value`` and ``stream`` holds
        none of ``event_ids``, in one step: whether it did. Undoes the claim of a request
        that appended nothing, even one whose append landed though its answer was lost."""
        fields = [b"i:" + event_id.bytes for event_id in event_ids]
        done: Any = await self._release(
            keys=[key, keys.stream_key(workspace, stream)], args=[value, *fields]
        )
        return bool(done)

    async def hold_streams(self, workspace: str, lengths: Mapping[str, int]) -> None:
        if lengths:
            fields: Any = dict(lengths)  # redis-py's mapping type takes no dict[str, int]
            await self.client.hset(keys.held_key(workspace), mapping=fields)

    async def release_streams(self, workspace: str, streams: Collection[str]) -> None:
        if streams:
            await self.client.hdel(keys.held_key(workspace), *streams)

    async def held_streams(self, workspace: str, streams: Collection[str]) -> dict[str, int]:
        names = list(streams)
        if not names:
            return {}
        lengths: Any = await self.client.hmget(keys.held_key(workspace), names)
        return {s: int(n) for s, n in zip(names, lengths, strict=True) if n is not None}

    async def head(self, workspace: str) -> int:
        try:
            info = await self.client.xinfo_stream(keys.log_key(workspace))
        except ResponseError:  # no such key
            return 0
        return int(info["last-generated-id"].rsplit(b"-", 1)[1])

    async def workspaces(self) -> list[str]:
        # the set is written before the append (so no workspace with events is ever
        # missing, but for a moment after the server lost both: see _relist), hence may
        # name one whose every append failed: keep those with a log
        await self._added_cursor()  # those added from now on, tail announces
        members: Any = await self.client.smembers(keys.WORKSPACES)
        names = sorted(m.decode() for m in members)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.log_key(name))
        found = await pipe.execute() if names else []
        return [name for name, n in zip(names, found, strict=True) if n]
