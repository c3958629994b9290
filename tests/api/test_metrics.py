"""``/metrics``: the API process's requests, and the system's state read at each scrape."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
from api_helpers import head, submit, submit_flaky, until_status
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from stageline.api import create_app, metrics
from stageline.api.metrics import live_consumers
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.registry import NAMES
from stageline.stack import Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def plain(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def of(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_the_state_of_a_workspace_is_read_at_each_scrape(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    run = (await submit(client)).json()
    await until_status(client, run["run_id"], "completed", min_position=run["position"])
    failed = (await submit_flaky(client, wait=20, fail_times=4)).json()
    assert failed["status"] == "failed", failed
    position = await head(client)
    listed = await client.get("/v1/dlq", params={"min_position": position})
    [dead] = listed.json()["dead_letters"]
    for _ in range(200):  # until every projection has caught up with the log
        samples = await scrape(client)
        lags = {
            n: of(samples, "stageline_projection_lag_events", workspace=workspace, projection=n)
            for n in NAMES
        }
        if set(lags.values()) == {0}:
            break
        await asyncio.sleep(0.05)
    assert lags == dict.fromkeys(NAMES, 0)
    events = of(samples, "stageline_log_events_total", workspace=workspace)
    assert events is not None and events >= position  # the ontology's rules may append more
    for name in NAMES:
        at = of(samples, "stageline_projection_checkpoint", workspace=workspace, projection=name)
        assert at == events, name
    assert of(samples, "stageline_runs", workspace=workspace, status="completed") == 1
    assert of(samples, "stageline_runs", workspace=workspace, status="failed") == 1
    assert of(samples, "stageline_runs", workspace=workspace, status="processing") == 0
    stage = dead["stage"]
    assert of(samples, "stageline_dead_letters_open", workspace=workspace, stage=stage) == 1
    # the package's worker reads every actor's channel, and the ingest channel
    for actor in [*stack.actors.names(), "@ingest"]:
        assert (of(samples, "stageline_channel_consumers", actor=actor) or 0) >= 1, actor
        assert of(samples, "stageline_channel_entries", actor=actor) is not None
    assert of(samples, "stageline_state_up") == 1


async def test_requests_are_counted_by_route_template_and_status(app: FastAPI) -> None:
    async with plain(app) as client:
        for run_id in ("a", "b", "c"):
            assert (await client.get(f"/v1/runs/{run_id}")).status_code == 404
        assert (await client.get("/no/such/path")).status_code == 404
        samples = await scrape(client)
    route = {"method": "GET", "route": "/v1/runs/{run_id}"}
    assert of(samples, "stageline_http_requests_total", status="404", **route) == 3
    assert of(samples, "stageline_http_request_duration_seconds_count", **route) == 3
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert of(samples, "stageline_http_requests_total", **unmatched) == 1


async def test_a_scrape_without_the_store_still_answers_with_state_up_0(stack: Stack) -> None:
    app = create_app(settings=stack.settings)  # its lifespan never ran: it has no stack
    async with plain(app) as client:
        samples = await scrape(client)
    assert of(samples, "stageline_state_up") == 0
    assert not [key for key in samples if key[0] == "stageline_log_events_total"]


async def test_only_consumers_that_read_within_the_claim_idle_time_are_counted(
    stack: Stack, workspace: str
) -> None:
    redis = stack.broker_client
    channel, group = f"test-consumers-{workspace}", "g"
    await redis.xgroup_create(channel, group, id="0", mkstream=True)
    try:
        await redis.xreadgroup(group, "host-1", {channel: ">"})  # a worker reading now
        reading = await redis.xinfo_consumers(channel, group)
    finally:
        await redis.delete(channel)
    [now] = reading
    assert now["idle"] < stack.settings.claim_idle_ms
    gone = [  # as Redis keeps them for a worker killed an hour ago and one stopped 30 s ago
        {**now, "name": b"host-2", "pending": 3, "idle": 3_600_000, "inactive": 3_600_000},
        {**now, "name": b"host-3", "pending": 0, "idle": 30_000, "inactive": 30_000},
    ]
    assert live_consumers([now, *gone], 30_000) == 1
    assert live_consumers([now, *gone], 3_600_001) == 3


async def test_a_scrape_of_a_refusing_store_logs_the_error_it_kept_failing_with(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT_SECONDS", 1.0)
    dead = RedisEventStore(connect("redis://127.0.0.1:1"))  # retries for seconds, past 1 s
    app = create_app(stack=dataclasses.replace(stack, store=dead))
    try:
        with capture_logs() as logs:
            async with plain(app) as client:
                samples = await scrape(client)
    finally:
        await dead.close()
    assert of(samples, "stageline_state_up") == 0
    [logged] = [e for e in logs if e["event"] == "metrics.state_unavailable"]
    # it said "TimeoutError: ", as if the server had hung
    assert logged["error"].startswith("ConnectionError: Error 111 connecting to 127.0.0.1:1.")
