"""Stage channels on the broker Redis: consumer groups, and command hand-offs in one step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from stageline.actors import commands
from stageline.actors.commands import StageCommand
from stageline.actors.schedule import scheduled_entry
from stageline.events import keys

DATA_FIELD = "__data__"  # FastStream's field name, so its tooling can read our entries

# One atomic step: the commands onto their channels, the delayed ones into the scheduled
# set, and only then the acknowledgement of the entries they follow from. A failing call
# stops the script, so an entry is never acknowledged unless all it hands on is written.
# KEYS: the channels written, then (as ARGV says) the scheduled set, the channel acked.
# ARGV: maxlen, n, n x (channel's KEYS index, payload), m, [set's index, m x (due, entry)],
#       [acked channel's index, group, entry ids...]
_HAND_OFF = """
local maxlen = ARGV[1]
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '=', maxlen, 'ACKED', '*',
             '__data__', ARGV[i + 1])
  i = i + 2
end
local m = tonumber(ARGV[i])
i = i + 1
if m > 0 then
  local key = KEYS[tonumber(ARGV[i])]
  i = i + 1
  for _ = 1, m do
    redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
if ARGV[i] then
  return redis.call('XACK', KEYS[tonumber(ARGV[i])], ARGV[i + 1], unpack(ARGV, i + 2))
end
return 0
"""


class CommandBus:
    """Writes stage commands to their actors' channels, many per round trip.

    Channels are trimmed to ``maxlen`` entries, but only of entries every
    consumer group has acknowledged (Redis 8.2 ``ACKED``): a backlog is never cut.
    """

    def __init__(self, client: aioredis.Redis, *, maxlen: int = 10_000) -> None:
        self.client = client
        self.maxlen = maxlen
        self._hand_off = client.register_script(_HAND_OFF)

    async def publish(
        self,
        items: Sequence[tuple[str, StageCommand]],
        *,
        scheduled: Sequence[tuple[float, str, bytes]] = (),
        ack: tuple[str, Sequence[bytes]] | None = None,
    ) -> None:
        """Put each ``(actor, command)`` on the actor's channel, each ``(due, channel,
        payload)`` in the scheduler, then acknowledge ``ack``'s ``(actor, entry ids)``.

        One round trip and one atomic step: the entries are acknowledged only
        once everything that follows from them is written.
        """
        acked = ack is not None and len(ack[1]) > 0
        if not items and not scheduled and not acked:
            return
        if len(items) == 1 and not scheduled and not acked:  # a plain XADD costs the server less
            actor, command = items[0]
            await self.client.execute_command(
                "XADD", keys.stage_channel(actor), "MAXLEN", "=", self.maxlen, "ACKED", "*",
                DATA_FIELD, commands.encode(command),
            )  # fmt: skip
            return
        slots: dict[str, int] = {}
        args: list[EncodableT] = [self.maxlen, len(items)]
        for actor, command in items:
            channel = keys.stage_channel(actor)
            args += (slots.setdefault(channel, len(slots) + 1), commands.encode(command))
        args.append(len(scheduled))
        if scheduled:
            args.append(slots.setdefault(keys.SCHEDULED, len(slots) + 1))
            for due, channel, payload in scheduled:
                args += (due, scheduled_entry(channel, payload))
        if ack is not None and acked:
            actor, entry_ids = ack
            args += (slots.setdefault(keys.stage_channel(actor), len(slots) + 1),)
            args += (keys.stage_group(actor), *entry_ids)
        await self._hand_off(keys=list(slots), args=args)

    async def ensure_groups(self, actors: Iterable[str]) -> list[str]:
        """Create each actor's consumer group at 0, so entries written before it are not skipped.

        Returns the actors whose group did not exist (new, or lost with its stream).
        """
        return [
            actor
            for actor in actors
            if await self.ensure_group(keys.stage_channel(actor), keys.stage_group(actor))
        ]

    async def ensure_group(self, channel: str, group: str) -> bool:
        """Create ``channel``'s consumer ``group`` at 0; whether it did not exist."""
        try:
            await self.client.xgroup_create(channel, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True
