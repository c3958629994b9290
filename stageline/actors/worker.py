"""A worker process: one FastStream subscriber and one claimer per actor, plus the scheduler.

The subscriber reads new entries in batches. The claimer (``XAUTOCLAIM``) takes
over entries left pending by a worker that died, stopped or failed on them;
an entry it finds delivered more than ``max_deliveries`` times is recorded as
dead-lettered and acknowledged instead of being handled again, so a command
that crashes its worker cannot loop forever. A delivery that failed because
Redis was unreachable is taken back from the count: an outage makes nothing
poison. A supervisor recreates consumer groups Redis lost and restarts the
subscribers FastStream stopped over it.

``stop()`` returns only once no read of the worker can happen any more: a read
task that outlived it would take entries from the group (they become pending
under this consumer) and drop them, as its subscriber is stopped, and nothing
would handle them before the claimer's ``claim_idle_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import msgspec
import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio.retry import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.actors import commands, ingest, outside
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.deadletters import (
    DeadLetters,
    channel_entry_dead_letter_id,
    entry_dead_letter_id,
)
from stageline.actors.decide import ABANDON_GRACE_SECONDS
from stageline.actors.ingest import MAX_BYTES as INGEST_MAX_BYTES
from stageline.actors.ingest import IngestEntry
from stageline.actors.pipeline import Pipeline, PipelineCatalog, PipelineKey
from stageline.actors.runtime import StageRuntime
from stageline.actors.schedule import Scheduler
from stageline.actors.stage import ActorRegistry
from stageline.actors.stops import StopListener
from stageline.actors.supervise import Supervisor
from stageline.errors import StagelineError, Unavailable
from stageline.events import keys
from stageline.events.redis_store import (
    CONNECT_TIMEOUT_SECONDS,
    RedisEventStore,
    connect,
    retry_policy,
    same_server,
)
from stageline.events.store import EventStore
from stageline.logs import FASTSTREAM_LOGGER, get_logger

log = structlog.get_logger(__name__)
_DATA = DATA_FIELD.encode()
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
T = TypeVar("T")
_READERS_END_SECONDS = 0.5
"""How long ``stop()`` keeps cancelling read tasks that did not end with the broker."""
_LEAVE_GROUP = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""
"""Delete a consumer from a group only if nothing is pending under it, in one step: a
consumer deleted with pending entries would lose them."""


@dataclass(frozen=True)
class Entry:
    """One channel entry: its stream id, its bytes, and the command in them (or why none)."""

    entry_id: bytes
    raw: bytes
    command: StageCommand | None
    error: str = ""


async def _parse(message: Mapping[str, Any], original: Any) -> Any:
    # FastStream's batch parser JSON-decodes every entry; ours are msgpack, decoded below
    msg = await original({**message, "data": []})
    msg.raw_message = message
    return msg


async def _fields(msg: Any, original: Any) -> list[tuple[bytes, Mapping[bytes, bytes]]]:
    message = msg.raw_message
    return list(zip(message["message_ids"], message["data"], strict=True))


async def _decode(msg: Any, original: Any) -> list[Entry]:
    message = msg.raw_message
    out: list[Entry] = []
    for entry_id, fields in zip(message["message_ids"], message["data"], strict=True):
        raw = fields.get(_DATA, b"")
        try:
            out.append(Entry(entry_id, raw, commands.decode(raw)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            out.append(Entry(entry_id, raw, None, f"undecodable command: {exc}"))
    return out


class _StreamSub(StreamSub[Any]):
    """FastStream's ``StreamSub``, not copied for every read.

    FastStream 0.7.8 deep-copies a subscriber's ``StreamSub`` each time it reads
    (and logs), to add the broker's prefix to the name: 9% of a worker's CPU at
    half load. stageline's broker has no prefix, so the copy would be the same.
    """

    def add_prefix(self, prefix: str) -> Self:
        return super().add_prefix(prefix) if prefix else self


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 200
    claim_idle_ms: int = 30_000
    poll_ms: int = 100
    channel_maxlen: int = 10_000
    abandon_grace_seconds: float = ABANDON_GRACE_SECONDS
    max_deliveries: int = 5
    """A claimed entry delivered more often than this is dead-lettered, not handled."""
    supervise_seconds: float = 2.0
    drain_seconds: float = 15.0
    """``stop()`` returns within this long: batches in hand get all but 1.5 s of it (at least
    half), the rest is for recording the attempts cut off (``runtime.CUT_OFF_S``),
    acknowledging, closing and the process's own exit."""
    max_stage_timeout_seconds: float | None = None
    workspace: str = "default"
    """Where an undecodable command (whose own workspace is unknown) is dead-lettered, and
    the workspace of ingest entries that name none."""
    ingest: bool = True
    """Consume the ingest channel (``stageline.actors.ingest``) too."""
    max_body_bytes: int = INGEST_MAX_BYTES
    """Largest ingest entry body appended (``STAGELINE_MAX_BODY_BYTES``, as HTTP's)."""
    consumer: str = f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Consumes every registered actor's channel in this process until stopped.

    Several workers share each actor's consumer group; a claimer beside each
    subscriber takes over entries a dead or stopped worker left pending.
    """

    def __init__(
        self,
        store: EventStore,
        broker_url: str,
        catalog: PipelineCatalog,
        actors: ActorRegistry,
        config: WorkerConfig | None = None,
    ) -> None:
        self.config = cfg = config or WorkerConfig()
        self.actors = actors
        self.store = store
        self.client = connect(broker_url)
        self.bus = CommandBus(self.client, maxlen=cfg.channel_maxlen)
        self.scheduler = Scheduler(self.client, channel_maxlen=cfg.channel_maxlen)
        self.dead_letters = DeadLetters(store, self.bus, actors.names)
        if cfg.max_stage_timeout_seconds is not None:
            catalog = CappedTimeouts(catalog, cfg.max_stage_timeout_seconds)
        self.runtime = StageRuntime(
            store,
            catalog,
            actors,
            self.bus,
            self.dead_letters,
            abandon_grace=cfg.abandon_grace_seconds,
            max_abandoned=cfg.max_deliveries,
            # the channels on the store's server: a result's append also hands its run on
            outbox=isinstance(store, RedisEventStore) and same_server(store.client, self.client),
        )
        # per-message lines at DEBUG; configure_logging keeps this logger at WARNING
        self.broker = RedisBroker(
            broker_url,
            logger=get_logger(FASTSTREAM_LOGGER),
            log_level=logging.DEBUG,
            graceful_timeout=max(cfg.drain_seconds - 1.5, cfg.drain_seconds / 2),
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=retry_policy(NoRetryOnceCancelled),
        )
        self._ingest = [(keys.INGEST_CHANNEL, keys.INGEST_GROUP)] if cfg.ingest else []
        self.supervisor = Supervisor(
            self.broker,
            self.bus,
            actors.names(),
            interval=cfg.supervise_seconds,
            channels=self._ingest,
            claim_idle_ms=cfg.claim_idle_ms,
        )
        self.stops = StopListener(self.client, self.runtime.running)
        self._stop = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None
        self._supervisor_task: asyncio.Task[None] | None = None
        self._stops_task: asyncio.Task[None] | None = None
        self._deaf = asyncio.Event()  # set once no batch is in hand: the notices are moot
        for actor in sorted(actors.names()):
            self._subscribe(actor)
        if cfg.ingest:
            self._subscribe_ingest()

    def _subscribe(self, actor: str) -> None:
        channel, group = keys.stage_channel(actor), keys.stage_group(actor)
        self._subscribers(channel, group, _decode, lambda claimed: self._handler(actor, claimed))

    def _subscribe_ingest(self) -> None:
        def handler(claimed: bool) -> Any:
            async def handle(batch: Any) -> None:
                await self._unless_cut_off(
                    keys.INGEST_CHANNEL, self.handle_ingest(batch, claimed=claimed)
                )

            handle.__name__ = "claim_ingest" if claimed else "ingest"
            return handle

        self._subscribers(keys.INGEST_CHANNEL, keys.INGEST_GROUP, _fields, handler)

    def _subscribers(
        self, channel: str, group: str, decoder: Any, handler: Callable[[bool], Any]
    ) -> None:
        """A batch subscriber and its claimer on ``channel``, each acknowledging by hand."""
        cfg = self.config
        for claim in (None, cfg.claim_idle_ms):
            sub = _StreamSub(
                channel,
                group=group,
                consumer=cfg.consumer,
                batch=True,
                max_records=cfg.batch_size,
                # the claimer pauses this long after finding nothing to claim: nothing can be
                # claimable before claim_idle_ms, so a tenth of it delays a claim by <= 10%
                polling_interval=cfg.poll_ms if claim is None else claim_poll_ms(cfg),
                min_idle_time=claim,
            )
            # acknowledged by the handler, in the step that hands the batch's runs on
            self.broker.subscriber(
                stream=sub, parser=_parse, decoder=decoder, ack_policy=AckPolicy.MANUAL
            )(handler(claim is not None))

    def _handler(self, actor: str, claimed: bool) -> Any:
        async def handle(batch: Any) -> None:
            channel = keys.stage_channel(actor)
            await self._unless_cut_off(channel, self.handle(actor, batch, claimed=claimed))

        handle.__name__ = f"{'claim' if claimed else 'stage'}_{actor}"
        return handle

    async def _unless_cut_off(self, channel: str, handling: Awaitable[None]) -> None:
        """``handling`` a batch; if the drain time runs out first, one warning line.

        At ``stop()`` FastStream cancels the batches still running after its graceful
        timeout. The runtime records the attempts they drop and hands them on; but the
        cancellation, raised on, was logged by FastStream as an error with its
        traceback, on every deploy that stopped a worker with a long stage in hand.
        """
        try:
            await handling
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            log.warning("worker.batch_cut_off", channel=channel)

    async def handle(self, actor: str, entries: Sequence[Entry], *, claimed: bool = False) -> None:
        """Handle one read of ``actor``'s channel; raises (the entries stay pending) on failure.

        Entries that cannot be handled (undecodable, or ``claimed`` and
        delivered too often) are dead-lettered and acknowledged first, so a
        failure of the rest of the batch never brings them back. The rest are
        acknowledged by the runtime together with the commands they hand on.
        """
        channel, group = keys.stage_channel(actor), keys.stage_group(actor)
        deliveries = await self._deliveries(channel, group, entries) if claimed else {}
        good, poison = _triage(
            entries, lambda e: e.command is not None, deliveries, self.config.max_deliveries
        )
        if poison:
            await self._dead_letter(actor, poison)
        if not good:
            return
        try:
            await self.runtime.handle(
                actor,
                [e.command for e in good if e.command is not None],
                ack=[e.entry_id for e in good],
                redelivered=claimed,
            )
        except _UNREACHABLE:
            # Redis failed, not the commands: an outage must not turn them into poison
            await self._uncount(channel, group, good, deliveries)
            raise

    async def handle_ingest(
        self, entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]], *, claimed: bool = False
    ) -> None:
        """Append what one read of the ingest channel asks for, then acknowledge it all.

        An entry that can never be appended (``ingest.parse`` refused it, the store
        refused its append, or it was ``claimed`` after too many deliveries) is
        dead-lettered. A failure of Redis raises: nothing is acknowledged, the entries
        stay pending, and a redelivery appends nothing twice (its event ids are derived
        from the entry id).
        """
        channel, group = keys.INGEST_CHANNEL, keys.INGEST_GROUP
        now = datetime.now(UTC)
        parsed = [
            ingest.parse(
                entry_id,
                fields,
                default_workspace=self.config.workspace,
                now=now,
                max_bytes=self.config.max_body_bytes,
            )
            for entry_id, fields in entries
        ]
        deliveries = await self._deliveries(channel, group, parsed) if claimed else {}
        good, poison = _triage(
            parsed, lambda e: e.request is not None, deliveries, self.config.max_deliveries
        )
        requests = [e.request for e in good if e.request is not None]
        try:
            results = await outside.append_batch(self.store, requests)
            for entry, request, result in zip(good, requests, results, strict=True):
                if not isinstance(result, Exception):
                    continue
                if isinstance(result, Unavailable) or not isinstance(result, StagelineError):
                    raise result  # not the entry's fault: it stays pending
                error = f"append to stream {request.stream!r} refused: {result.message}"
                poison.append((entry, error, deliveries.get(entry.entry_id, 1)))
        except (*_UNREACHABLE, Unavailable):
            await self._uncount(channel, group, good, deliveries)
            raise
        for entry, error, count in poison:
            dead_letter = await self.dead_letters.add(
                entry.workspace,
                keys.INGEST_ACTOR,
                raw=entry.raw,
                error=error,
                deliveries=count,
                dead_letter_id=channel_entry_dead_letter_id(channel, entry.entry_id),
            )
            log.error(
                "worker.ingest_dead_lettered",
                entry=entry.entry_id.decode(),
                dead_letter=dead_letter,
                deliveries=count,
                error=error,
                workspace=entry.workspace,
            )
        if parsed:
            await self._ack_ingest([e.entry_id for e in parsed])

    async def _ack_ingest(self, entry_ids: Sequence[bytes]) -> None:
        """Acknowledge ingest entries, and let acknowledged ones beyond ``channel_maxlen`` go,
        as on the stage channels: never one not yet acknowledged, so a backlog is not cut
        (Redis 8.2 ``ACKED``)."""
        channel = keys.INGEST_CHANNEL
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(channel, keys.INGEST_GROUP, *entry_ids)
        pipe.execute_command("XTRIM", channel, "MAXLEN", "=", self.config.channel_maxlen, "ACKED")
        await pipe.execute()

    async def _deliveries(
        self, channel: str, group: str, entries: Sequence[Entry | IngestEntry]
    ) -> dict[bytes, int]:
        """How often each entry has been delivered, this delivery included (XPENDING)."""
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(channel, group, min=entry.entry_id, max=entry.entry_id, count=1)
        replies = await pipe.execute()
        return {
            reply[0]["message_id"]: int(reply[0]["times_delivered"]) for reply in replies if reply
        }

    async def _uncount(
        self,
        channel: str,
        group: str,
        entries: Sequence[Entry | IngestEntry],
        deliveries: Mapping[bytes, int],
    ) -> None:
        """Take back this delivery from each entry's count; they stay pending, to be claimed."""
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xclaim(
                channel,
                group,
                self.config.consumer,
                0,
                [entry.entry_id],
                retrycount=deliveries.get(entry.entry_id, 1) - 1,
                justid=True,
            )
        try:
            await pipe.execute()
        except Exception as exc:  # the broker is down too: this delivery counts, no more
            log.warning(
                "worker.uncount_failed", channel=channel, error=f"{type(exc).__name__}: {exc}"
            )

    def _stage_name(self, command: StageCommand | None) -> str | None:
        """The stage's name, so poison entries list under it like failed runs do."""
        if command is None:
            return None
        try:
            pipeline = self.runtime.catalog.get(
                command.workspace, command.pipeline, command.pipeline_version
            )
            return pipeline.stage(command.index).name
        except (StagelineError, IndexError):
            return None

    async def _dead_letter(self, actor: str, poison: Sequence[tuple[Entry, str, int]]) -> None:
        channel = keys.stage_channel(actor)
        for entry, error, deliveries in poison:
            command = entry.command
            workspace = self.config.workspace
            if command is not None and keys.is_workspace(command.workspace):
                workspace = command.workspace
            # the same entry dead-lettered twice (the ack below was lost) is recorded once
            dead_letter_id = entry_dead_letter_id(actor, entry.entry_id)
            await self.dead_letters.add(
                workspace,
                actor,
                raw=entry.raw,
                error=error,
                deliveries=deliveries,
                command=command,
                dead_letter_id=dead_letter_id,
                stage=self._stage_name(command),
            )
            log.error(
                "worker.dead_lettered",
                actor=actor,
                entry=entry.entry_id.decode(),
                dead_letter=str(dead_letter_id),
                deliveries=deliveries,
                error=error,
                workspace=workspace,
                run_id=command.run_id if command else None,
            )
        await self.client.xack(
            channel, keys.stage_group(actor), *(e.entry_id for e, _, _ in poison)
        )

    async def start(self) -> None:
        """Create the groups, start consuming, the scheduler and the supervisor."""
        await self.bus.ensure_groups(self.actors.names())
        for channel, group in self._ingest:
            await self.bus.ensure_group(channel, group)
        try:
            await self.broker.start()
        except BaseException:
            await self.broker.stop()  # a later start begins from scratch
            raise
        self._stop.clear()
        self._deaf.clear()
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stop))
        self._supervisor_task = asyncio.create_task(self.supervisor.run(self._stop))
        self._stops_task = asyncio.create_task(self.stops.run(self._deaf))
        log.info(
            "worker.started", consumer=self.config.consumer, actors=sorted(self.actors.names())
        )

    async def stop(self) -> None:
        """Stop taking entries, let the batches in hand finish (within the drain time), close.

        Entries read but not yet handled stay pending: another worker's claimer takes
        them. The attempts of batches still running when the drain time is up are
        recorded abandoned, their next attempts handed on at once (see
        ``StageRuntime.handle``); one that cannot be recorded stays pending too.
        """
        self._stop.set()
        if self._supervisor_task is not None:
            await self._supervisor_task  # first: it would start stopped subscribers again
        # FastStream cancels its read tasks and forgets them: keep them, to see them end
        readers = [task for sub in self.broker.subscribers for task in getattr(sub, "tasks", ())]
        await self.broker.stop()
        await _end(readers, _READERS_END_SECONDS)
        await self.runtime.cut_offs()  # before leaving the groups: they acknowledge entries
        if self._scheduler_task is not None:
            await self._scheduler_task
        self._deaf.set()  # heard until now: a cancel interrupts a batch draining too
        if self._stops_task is not None:
            self._stops_task.cancel()  # not waiting for its read to time out
            await _end([self._stops_task], _READERS_END_SECONDS)
        await self._leave_groups()
        await self.client.aclose()
        log.info("worker.stopped", consumer=self.config.consumer)

    async def _leave_groups(self) -> None:
        """Delete this worker's consumer from each group it read that holds nothing pending
        under it, so the groups list only live workers (a consumer is never deleted
        otherwise). One with entries pending stays: they are another worker's to claim."""
        groups = [(keys.stage_channel(a), keys.stage_group(a)) for a in sorted(self.actors.names())]
        pipe = self.client.pipeline(transaction=False)
        for channel, group in [*groups, *self._ingest]:
            pipe.eval(_LEAVE_GROUP, 1, channel, group, self.config.consumer)
        try:
            await pipe.execute(raise_on_error=False)  # a group lost meanwhile: nothing to leave
        except Exception as exc:  # the broker is gone: the consumers stay, idle
            log.warning("worker.leave_failed", error=f"{type(exc).__name__}: {exc}")


class NoRetryOnceCancelled(Retry):
    """A retry policy, except that a task that was asked to stop is never retried.

    Python 3.11's ``asyncio.wait_for``, which redis-py sends each command
    through, loses a cancellation that comes as the send completes (CPython
    gh-86296). A subscriber's read task cancelled by ``broker.stop()`` then
    runs on; when the broker closes its connection, the read fails, and a plain
    retry would reconnect and send ``XREADGROUP`` again, taking entries the
    stopped subscriber drops. Here the failure ends the task instead.
    """

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        async def failed(error: Exception, *failures: int) -> None:
            await fail(error, *failures)  # closes the connection
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from error

        return await super().call_with_retry(do, failed, is_retryable, with_failure_count)


async def _end(tasks: Sequence[asyncio.Task[Any]], within: float) -> None:
    """Wait for cancelled ``tasks`` to end, cancelling again those that lost it (see above)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = {task for task in tasks if not task.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            log.warning("worker.readers_left_running", count=len(pending))
            return
        _, pending = await asyncio.wait(pending, timeout=min(left, 0.02))
        for task in pending:
            task.cancel()


class CappedTimeouts(PipelineCatalog):
    """``catalog``'s pipelines with every stage timeout at most ``seconds``.

    A stage timeout also sets how long a lost attempt waits before it is
    retried, so capping it bounds that wait (e.g. in fault-injection tests).
    """

    def __init__(self, catalog: PipelineCatalog, seconds: float) -> None:
        super().__init__([])
        self.catalog = catalog
        self.seconds = seconds
        self._capped: dict[int, tuple[Pipeline, Pipeline]] = {}

    def add(self, pipeline: Pipeline) -> None:
        self.catalog.add(pipeline)

    async def prefetch(self, keys: Iterable[PipelineKey]) -> None:
        await self.catalog.prefetch(keys)

    async def resolve(self, workspace: str, name: str, version: int | None = None) -> Pipeline:
        return self._cap(await self.catalog.resolve(workspace, name, version))

    def get(self, workspace: str, name: str, version: int | None = None) -> Pipeline:
        return self._cap(self.catalog.get(workspace, name, version))

    def _cap(self, pipeline: Pipeline) -> Pipeline:
        known = self._capped.get(id(pipeline))
        if known is None or known[0] is not pipeline:
            stages = tuple(
                msgspec.structs.replace(s, timeout_seconds=min(s.timeout_seconds, self.seconds))
                for s in pipeline.stages
            )
            known = (pipeline, msgspec.structs.replace(pipeline, stages=stages))
            self._capped[id(pipeline)] = known
        return known[1]

    def is_builtin(self, name: str) -> bool:
        return self.catalog.is_builtin(name)

    def builtins(self) -> list[Pipeline]:
        return [self._cap(p) for p in self.catalog.builtins()]

    def names(self, workspace: str) -> list[str]:
        return self.catalog.names(workspace)


E = TypeVar("E", Entry, IngestEntry)


def _triage(
    entries: Sequence[E], usable: Callable[[E], bool], deliveries: Mapping[bytes, int], limit: int
) -> tuple[list[E], list[tuple[E, str, int]]]:
    """A read's entries to handle, and its poison: each unusable entry, or one delivered more
    than ``limit`` times, with the reason and its delivery count."""
    good: list[E] = []
    poison: list[tuple[E, str, int]] = []
    for entry in entries:
        count = deliveries.get(entry.entry_id, 1)
        if not usable(entry):
            poison.append((entry, entry.error, count))
        elif count > limit:
            poison.append((entry, _too_often(count, limit), count))
        else:
            good.append(entry)
    return good, poison


def _too_often(count: int, limit: int) -> str:
    return (
        f"delivered {count} times without being acknowledged (limit {limit}): "
        "every worker that took it crashed or failed on it"
    )


def claim_poll_ms(config: WorkerConfig) -> int:
    """How long a claimer waits after a scan of the pending entries found nothing."""
    return max(config.poll_ms, config.claim_idle_ms // 10)
