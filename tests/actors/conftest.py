"""Fixtures the actor tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A bytes client of the test server, for channels and the scheduler."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    await client.aclose()
