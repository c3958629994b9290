"""The floor of what a durable append can cost on this server: a bare Lua script.

It checks the stream's version and writes two Redis Streams (the event into the
workspace log, a pointer into the stream), nothing else: no idempotency check,
no index hash, no client-side encoding (the blobs are encoded before timing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from stageline.events import codec
from stageline.events.store import AppendRequest

PREFIX = "bench-floor"

SCRIPT = """
local n = redis.call('XLEN', KEYS[1])
local expected = tonumber(ARGV[1])
if expected ~= -2 and expected ~= n - 1 then
  return {0, n - 1}
end
for i = 2, #ARGV do
  local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[i])
  redis.call('XADD', KEYS[1], '*', 'p', id)
end
return {1, n + #ARGV - 2}
"""

Call = tuple[str, str, int, list[bytes]]
"""(stream key, log key, expected version, blobs)."""


def calls(requests: Sequence[AppendRequest]) -> list[Call]:
    """The floor's calls for the same appends, their events encoded as stageline stores them."""
    return [
        (
            f"{PREFIX}:{{{r.workspace}}}:s:{r.stream}",
            f"{PREFIX}:{{{r.workspace}}}:log",
            r.expected_version,
            [codec.encode(e) for e in r.events],
        )
        for r in requests
    ]


class Floor:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.sha = ""

    async def load(self) -> None:
        self.sha = await self.client.script_load(SCRIPT)

    async def one(self, call: Call) -> Any:
        stream, log, expected, blobs = call
        reply = await self.client.evalsha(self.sha, 2, stream, log, expected, *blobs)
        if reply[0] != 1:
            raise RuntimeError(f"floor append clashed: {reply}")
        return reply

    async def pipelined(self, batch: Sequence[Call]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for stream, log, expected, blobs in batch:
            pipe.evalsha(self.sha, 2, stream, log, expected, *blobs)
        replies = await pipe.execute()
        if any(r[0] != 1 for r in replies):
            raise RuntimeError("floor append clashed")
