"""Keeps a worker's subscribers consuming when Redis loses their consumer groups.

FastStream 0.7.8 stops a stream subscriber for good when its group is gone
(``NOGROUP`` after a ``FLUSHALL``, a ``DEL`` of the channel, or a restart of a
Redis without persistence). Every ``interval`` the supervisor creates any
missing group at id 0, so no entry written since is skipped, and starts again
each subscriber that stopped. Connection errors are not its business: the
clients retry, and FastStream's read loop keeps going through them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import structlog
from faststream.redis import RedisBroker

from stageline.actors.channels import CommandBus

log = structlog.get_logger(__name__)


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
    ) -> None:
        self.broker = broker
        self.bus = bus
        self.actors = sorted(actors)
        self.channels = list(channels)
        """Other ``(channel, group)`` pairs the worker reads (the ingest channel)."""
        self.interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval`` until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            if not stop.is_set():
                await self.check()

    async def check(self) -> int:
        """One round; returns how many subscribers it started again."""
        try:
            created = await self.bus.ensure_groups(self.actors)
            for channel, group in self.channels:
                if await self.bus.ensure_group(channel, group):
                    created.append(channel)
        except Exception as exc:  # Redis unreachable even after the client's retries
            log.warning("worker.groups_unchecked", error=f"{type(exc).__name__}: {exc}")
            return 0
        if created:
            log.warning("worker.groups_recreated", actors=created)
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


def _stopped(sub: Any) -> bool:
    # a subscriber still stopping holds its tasks until the end: starting it then would have
    # the new read task cancelled by the stop in progress
    return not sub.running and not getattr(sub, "tasks", ())


def _channel(sub: Any) -> str:
    return str(sub.stream_sub.name)


def _claims(sub: Any) -> bool:
    return getattr(sub, "min_idle_time", None) is not None
