"""``/healthz`` and ``/readyz``."""

from __future__ import annotations

import dataclasses

import httpx
import redis.asyncio as aioredis
from api_helpers import assert_error
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stageline.api import create_app
from stageline.events.redis_store import connect
from stageline.stack import Stack


async def test_healthz_answers_without_any_dependency() -> None:
    # no stack at all: the lifespan has not run, so nothing is connected
    app = create_app(stack=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert_error(await c.get("/readyz"), 503, "UNAVAILABLE")


async def test_readyz_checks_store_broker_and_views(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"store", "broker", "views"}
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


async def readyz_with_broker(stack: Stack, dead: aioredis.Redis) -> httpx.Response:
    """``GET /readyz`` of an app whose broker client is ``dead`` (closed afterwards)."""
    app = create_app(stack=dataclasses.replace(stack, broker_client=dead))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.get("/readyz")
    finally:
        await dead.aclose()


async def test_readyz_is_503_naming_the_dependency_that_failed(stack: Stack) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    r = await readyz_with_broker(stack, dead)
    error = assert_error(r, 503, "UNAVAILABLE")
    checks = error["details"]["checks"]
    assert checks["broker"]["ok"] is False and checks["broker"]["error"]
    assert checks["store"]["ok"] is True and checks["views"]["ok"] is True
    assert error["message"] == "not ready: broker did not answer"


async def test_readyz_names_the_error_a_dependency_kept_failing_with(stack: Stack) -> None:
    # stageline's own client: it retries a refused connection for seconds, past the check
    dead = connect("redis://127.0.0.1:1")
    r = await readyz_with_broker(stack, dead)
    broker = assert_error(r, 503, "UNAVAILABLE")["details"]["checks"]["broker"]
    # it said "timed out", as if the server had hung
    assert broker["error"].startswith("ConnectionError: Error 111 connecting to 127.0.0.1:1."), (
        broker
    )
    assert broker["error"].endswith("(retrying it when 1s ran out)")
