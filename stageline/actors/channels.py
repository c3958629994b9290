"""Stage channels on the broker Redis: consumer groups and pipelined command writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stageline.actors import commands
from stageline.actors.commands import StageCommand
from stageline.events import keys

DATA_FIELD = "__data__"  # FastStream's field name, so its tooling can read our entries


class CommandBus:
    """Writes stage commands to their actors' channels, many per round trip.

    Channels are trimmed to ``maxlen`` entries, but only of entries every
    consumer group has acknowledged (Redis 8.2 ``ACKED``): a backlog is never cut.
    """

    def __init__(self, client: aioredis.Redis, *, maxlen: int = 10_000) -> None:
        self.client = client
        self.maxlen = maxlen

    async def publish(self, items: Sequence[tuple[str, StageCommand]]) -> None:
        """Put each ``(actor, command)`` on the actor's channel."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        for actor, command in items:
            pipe.execute_command(
                "XADD", keys.stage_channel(actor), "MAXLEN", "=", self.maxlen, "ACKED", "*",
                DATA_FIELD, commands.encode(command),
            )  # fmt: skip
        await pipe.execute()

    async def ensure_groups(self, actors: Iterable[str]) -> list[str]:
        """Create each actor's consumer group at 0, so entries written before it are not skipped.

        Returns the actors whose group did not exist (new, or lost with its stream).
        """
        created = []
        for actor in actors:
            try:
                await self.client.xgroup_create(
                    keys.stage_channel(actor), keys.stage_group(actor), id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            else:
                created.append(actor)
        return created
