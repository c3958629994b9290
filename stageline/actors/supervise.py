"""Keeps a worker's subscribers consuming when Redis loses their consumer groups.

FastStream 0.7.8 stops a stream subscriber for good when its group is gone
(``NOGROUP`` after a ``FLUSHALL``, a ``DEL`` of the channel, or a restart of a
Redis without persistence). Every ``interval`` the supervisor creates any
missing group at id 0, so no entry written since is skipped, and starts again
each subscriber that stopped.

Connection errors it only reports: the clients retry, and FastStream's read
loop keeps going through them. A round the broker does not answer within
``PROBE_SECONDS`` logs ``broker.unreachable`` once, and FastStream's fetch
errors are dropped until a round it answers logs ``broker.reachable``.

Once every ``SWEEP_SECONDS`` it also deletes the consumers of killed workers
from its groups (``stale_after_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import structlog
from faststream.redis import RedisBroker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.actors.channels import CommandBus
from stageline.events import keys
from stageline.events.redis_store import failure, retried_errors
from stageline.logs import UnreachableFetchErrors

log = structlog.get_logger(__name__)

PROBE_SECONDS = 1.0
"""How long a round waits for the broker before it counts it unreachable (as ``/readyz``)."""
SWEEP_SECONDS = 600.0
"""How often stale consumers are looked for; the first round looks at once."""


def stale_after_ms(claim_idle_ms: int) -> int:
    """How long a consumer with nothing pending must have been idle to be deleted.

    A live worker reads under its consumer every ``poll_ms`` (2 s at most), so one
    silent for ten claim windows belongs to a process that is gone. At least an hour:
    after a crash, ``XINFO CONSUMERS`` still shows for a while which workers read.
    """
    return max(10 * claim_idle_ms, 3_600_000)


class Supervisor:
    """Recreates lost consumer groups and restarts stopped subscribers, every ``interval``."""

    def __init__(
        self,
        broker: RedisBroker,
        bus: CommandBus,
        actors: Iterable[str],
        *,
        interval: float,
        channels: Iterable[tuple[str, str]] = (),
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.broker = broker
        self.bus = bus
        self.actors = sorted(actors)
        self.channels = list(channels)
        """Other ``(channel, group)`` pairs the worker reads (the ingest channel)."""
        self.interval = interval
        self.stale_ms = stale_after_ms(claim_idle_ms)
        """Consumers with nothing pending idle longer than this are deleted."""
        self._down_since: float | None = None
        self._fetch_errors = UnreachableFetchErrors()
        self._next_sweep = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval`` until ``stop`` is set."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
                if not stop.is_set():
                    await self.check()
        finally:
            if self._down_since is not None:  # stopped during an outage
                self._down_since = None
                self._fetch_errors.off()

    async def check(self) -> int:
        """One round; returns how many subscribers it started again."""
        started = time.monotonic()
        with retried_errors() as retried:
            try:  # a PING, as /readyz: a busy server still answers it within the second
                async with asyncio.timeout(PROBE_SECONDS):
                    await self.bus.client.ping()
            except (TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
                self._unreachable(failure(exc, retried, PROBE_SECONDS), since=started)
                return 0
        self._reachable()
        try:
            created = await self._ensure_groups()
        except Exception as exc:  # gone again since the PING, or it refuses
            log.warning("worker.groups_unchecked", error=f"{type(exc).__name__}: {exc}")
            return 0
        if created:
            log.warning("worker.groups_recreated", actors=created)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_SECONDS
            await self.sweep()
        restarted = 0
        for sub in self.broker.subscribers:
            if not _stopped(sub):
                continue
            channel = _channel(sub)
            try:
                await sub.start()
            except Exception as exc:
                log.warning(
                    "worker.subscriber_restart_failed",
                    channel=channel,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            restarted += 1
            log.warning("worker.subscriber_restarted", channel=channel, claimer=_claims(sub))
        return restarted

    async def sweep(self) -> int:
        """Delete the consumers of the worker's groups that have nothing pending and have
        been idle for ``stale_ms``; how many."""
        groups = [(keys.stage_channel(a), keys.stage_group(a)) for a in self.actors]
        removed: dict[str, int] = {}
        try:
            for channel, group in [*groups, *self.channels]:
                n = await self.bus.forget_idle_consumers(channel, group, self.stale_ms)
                if n:
                    removed[channel] = n
        except Exception as exc:  # the next sweep tries again
            log.warning("worker.consumers_unswept", error=f"{type(exc).__name__}: {exc}")
        if removed:
            log.info(
                "worker.stale_consumers_removed",
                count=sum(removed.values()),
                channels=removed,
                idle_ms=self.stale_ms,
            )
        return sum(removed.values())

    async def _ensure_groups(self) -> list[str]:
        created = await self.bus.ensure_groups(self.actors)
        for channel, group in self.channels:
            if await self.bus.ensure_group(channel, group):
                created.append(channel)
        return created

    def _unreachable(self, error: str, *, since: float) -> None:
        if self._down_since is not None:
            return
        self._down_since = since
        self._fetch_errors.on()
        log.warning("broker.unreachable", error=error)

    def _reachable(self) -> None:
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        self._down_since = None
        log.info(
            "broker.reachable",
            down_seconds=round(down, 1),
            fetch_errors_dropped=self._fetch_errors.off(),
        )


def _stopped(sub: Any) -> bool:
    # a subscriber still stopping holds its tasks until the end: starting it then would have
    # the new read task cancelled by the stop in progress
    return not sub.running and not getattr(sub, "tasks", ())


def _channel(sub: Any) -> str:
    return str(sub.stream_sub.name)


def _claims(sub: Any) -> bool:
    return getattr(sub, "min_idle_time", None) is not None
