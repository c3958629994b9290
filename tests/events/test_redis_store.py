"""Redis-only behaviour of the store, beyond the shared contract."""

from __future__ import annotations

from stageline.events import NewEvent
from stageline.events.redis_store import RedisEventStore
from stageline.events.store import AppendRequest, AppendResult


async def test_batch_appends_survive_a_flushed_script_cache(
    redis_store: RedisEventStore, workspace: str
) -> None:
    # every Redis restart empties the script cache: EVALSHA answers NOSCRIPT
    await redis_store.client.script_flush()
    requests = [
        AppendRequest(workspace, f"s{i}", [NewEvent(type="A", data={"i": i})]) for i in range(3)
    ]
    results = await redis_store.append_batch(requests)
    assert all(isinstance(r, AppendResult) for r in results), results
    assert await redis_store.head(workspace) == 3
    again = await redis_store.append_batch(requests)  # and a retry is still deduplicated
    assert all(isinstance(r, AppendResult) and r.deduplicated for r in again)
    assert await redis_store.head(workspace) == 3
