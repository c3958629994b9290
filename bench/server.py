"""The bench's own embedded Redis + FalkorDB server, and housekeeping on it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from stageline.embedded import EmbeddedServer
from stageline.events import keys


@contextlib.contextmanager
def embedded(appendfsync: str = "everysec") -> Iterator[tuple[str, Path]]:
    """Start a fresh embedded server in a temporary directory; its URL and the directory.

    The directory is short (unix socket paths are limited to ~107 bytes) and
    removed afterwards, with the AOF the benchmark wrote.
    """
    root = Path(tempfile.mkdtemp(prefix="slb-", dir="/tmp"))
    server = EmbeddedServer(root / "srv", appendfsync=appendfsync)  # type: ignore[arg-type]
    try:
        url = server.start()
        yield url, root
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def drop_workspace(client: aioredis.Redis, workspace: str, *prefixes: str) -> int:
    """Delete every key of ``workspace`` (its log, stream indexes, views graph; and keys
    under ``prefixes`` with its hash tag), so repetitions do not pile up in memory."""
    patterns = [f"{keys.PREFIX}:{{{workspace}}}:*", *(f"{p}:{{{workspace}}}:*" for p in prefixes)]
    deleted = 0
    for pattern in patterns:
        batch: list[Any] = []
        async for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += await client.unlink(*batch)
                batch = []
        if batch:
            deleted += await client.unlink(*batch)
    await client.srem(keys.WORKSPACES, workspace)
    return deleted


async def used_memory(client: aioredis.Redis) -> int:
    """``INFO used_memory`` once the server has freed what was deleted before: ``UNLINK``
    frees in the background, and FalkorDB frees a deleted graph in a thread of its own,
    so a delta taken meanwhile can even come out negative. Settled means no lazy free
    pending and the same figure twice, 50 ms apart."""
    deadline = time.monotonic() + 10
    last = None
    while True:
        info: Any = await client.info("memory")
        used = int(info["used_memory"])
        pending = int(info.get("lazyfree_pending_objects", 0))
        if (not pending and used == last) or time.monotonic() > deadline:
            return used
        last = None if pending else used
        await asyncio.sleep(0.05)


async def memory_usage(client: aioredis.Redis, key: str) -> int:
    """MEMORY USAGE with every element counted (SAMPLES 0)."""
    value: Any = await client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(value or 0)
