"""``/metrics``: Prometheus metrics of this API process and of the whole system's state.

Two kinds, in one exposition:

- this process's own: its HTTP requests by route and status, their durations,
  and the client library's process and Python collectors;
- the system's state, read from the store and the views at each scrape: each
  workspace's log head, each projection's lag, runs by status, open dead
  letters, and each stage channel's backlog. These are the same whichever API
  process is scraped, and cover the workers and projectors, which serve no HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stageline.events import keys
from stageline.events.redis_store import failure, retried_errors
from stageline.projections.registry import NAMES
from stageline.stack import Stack

__all__ = ["SCRAPE_TIMEOUT_SECONDS", "HttpMetrics", "metrics", "process_registry"]

log = structlog.get_logger(__name__)

SCRAPE_TIMEOUT_SECONDS = 5.0
"""The longest a scrape waits on the store and the views; Prometheus's own default is 10 s."""

_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what every Prometheus reads
_WORKSPACES_AT_ONCE = 16
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    """ASGI middleware counting requests by method, route template and status, and timing them.

    The route is the matched template (``/v1/runs/{run_id}``), or ``unmatched``,
    so the labels stay few whatever paths clients send.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "stageline_http_requests",
            "HTTP requests answered, by method, route and status.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.seconds = Histogram(
            "stageline_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ("method", "route"),
            buckets=_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, Route) else "unmatched"
            method = scope["method"]
            self.requests.labels(method, template, str(status)).inc()
            self.seconds.labels(method, template).observe(time.perf_counter() - started)


def process_registry() -> CollectorRegistry:
    """A registry of this app's own: apps in one process (tests) don't share counters."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


class _Families(Collector):
    def __init__(self, families: Sequence[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


async def metrics(request: Request) -> Response:
    """The exposition: this process's metrics, then the system's state as read just now.

    A state read that fails or outlasts ``SCRAPE_TIMEOUT_SECONDS`` leaves the
    state out and sets ``stageline_state_up`` to 0; the answer is still 200, so
    the process's own metrics keep coming.
    """
    stack: Stack | None = request.app.state.stack
    started = time.perf_counter()
    with retried_errors() as retried:
        try:
            if stack is None:
                raise RuntimeError("the API has no connection to the store yet")
            async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS):
                families = await _state(stack)
            up = 1
        except Exception as exc:  # a scrape reports the failure, it does not fail
            reason = failure(exc, retried, SCRAPE_TIMEOUT_SECONDS)
            log.warning("metrics.state_unavailable", error=reason)
            families, up = [], 0
    families.append(_gauge("stageline_state_up", "1 if this scrape read the state.", up))
    seconds = time.perf_counter() - started
    families.append(_gauge("stageline_state_read_seconds", "This scrape's state read.", seconds))
    own: CollectorRegistry = request.app.state.metrics
    state = CollectorRegistry(auto_describe=False)
    state.register(_Families(families))
    body = generate_latest(own) + generate_latest(state)
    return Response(body, media_type=_CONTENT_TYPE)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


async def _state(stack: Stack) -> list[Any]:
    workspaces = await stack.store.workspaces()
    at_once = asyncio.Semaphore(_WORKSPACES_AT_ONCE)

    async def read(workspace: str) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
        async with at_once:
            views = stack.views
            return await asyncio.gather(
                stack.store.head(workspace),
                views.checkpoints(workspace, NAMES),
                views.run_counts(workspace),
                views.open_dead_letters(workspace),
            )

    per_workspace, channels = await asyncio.gather(
        asyncio.gather(*(read(ws) for ws in workspaces)), _channels(stack)
    )
    events = CounterMetricFamily(
        "stageline_log_events", "Events in the workspace's log (its head).", labels=["workspace"]
    )
    lag = GaugeMetricFamily(
        "stageline_projection_lag_events",
        "Events of the log a projection has not applied yet.",
        labels=["workspace", "projection"],
    )
    checkpoint = GaugeMetricFamily(
        "stageline_projection_checkpoint",
        "The last log position a projection applied.",
        labels=["workspace", "projection"],
    )
    runs = GaugeMetricFamily(
        "stageline_runs",
        "Runs by status, as the run-status view holds them.",
        labels=["workspace", "status"],
    )
    dead = GaugeMetricFamily(
        "stageline_dead_letters_open",
        "Dead letters waiting for a redrive or a discard, by stage.",
        labels=["workspace", "stage"],
    )
    for ws, (head, checkpoints, counts, open_letters) in zip(
        workspaces, per_workspace, strict=True
    ):
        events.add_metric([ws], head)
        for name in NAMES:
            at = checkpoints.get(name, 0)
            checkpoint.add_metric([ws, name], at)
            lag.add_metric([ws, name], max(head - at, 0))
        for status, n in counts.items():
            runs.add_metric([ws, status], n)
        for stage, n in sorted(open_letters.items(), key=lambda item: str(item[0])):
            dead.add_metric([ws, stage or ""], n)
    return [events, checkpoint, lag, runs, dead, *channels]


async def _channels(stack: Stack) -> list[GaugeMetricFamily]:
    """Each stage channel's length, and its consumer group's pending entries, lag and
    live consumers; the ingest channel's too, as actor ``@ingest``."""
    channels = [
        (actor, keys.stage_channel(actor), keys.stage_group(actor))
        for actor in sorted(stack.actors.names())
    ]
    channels.append((keys.INGEST_ACTOR, keys.INGEST_CHANNEL, keys.INGEST_GROUP))
    pipe = stack.broker_client.pipeline(transaction=False)
    for _, channel, group_name in channels:
        pipe.xlen(channel)
        pipe.xinfo_groups(channel)
        pipe.xinfo_consumers(channel, group_name)
    pipe.zcard(keys.SCHEDULED)
    replies = await pipe.execute(raise_on_error=False)
    length = GaugeMetricFamily(
        "stageline_channel_entries", "Entries kept on a stage channel.", labels=["actor"]
    )
    pending = GaugeMetricFamily(
        "stageline_channel_pending",
        "Commands delivered to a worker and not yet acknowledged.",
        labels=["actor"],
    )
    waiting = GaugeMetricFamily(
        "stageline_channel_lag", "Commands on a stage channel not yet delivered.", labels=["actor"]
    )
    consumers = GaugeMetricFamily(
        "stageline_channel_consumers",
        "Workers reading a stage channel: consumers that read it within the claim idle time.",
        labels=["actor"],
    )
    live_within_ms = stack.settings.claim_idle_ms
    for i, (actor, _, name) in enumerate(channels):
        n, groups, readers = replies[3 * i : 3 * i + 3]
        length.add_metric([actor], n if isinstance(n, int) else 0)
        group = _group(groups, name)
        if group is not None:
            pending.add_metric([actor], int(group.get("pending") or 0))
            waiting.add_metric([actor], int(group.get("lag") or 0))
            if isinstance(readers, Exception):
                raise readers
            consumers.add_metric([actor], live_consumers(readers, live_within_ms))
    scheduled = replies[-1]
    if isinstance(scheduled, Exception):
        raise scheduled
    retries = _gauge(
        "stageline_retries_scheduled", "Commands waiting for their retry's backoff.", scheduled
    )
    return [length, pending, waiting, consumers, retries]


def live_consumers(consumers: Sequence[Mapping[str, Any]], within_ms: int) -> int:
    """How many of a group's consumers (an ``XINFO CONSUMERS`` reply) read or claimed
    within the last ``within_ms``.

    A consumer is named after its worker's host and pid and is never deleted, so the
    group's own count keeps every worker that ever read, a killed or stopped one too.
    A live worker's subscriber reads every ``poll_ms`` and its claimer claims every
    tenth of the claim idle time, both under its name; one silent for the whole claim
    idle time is gone (its pending entries are claimable by then).
    """
    return sum(1 for consumer in consumers if int(consumer.get("idle") or 0) < within_ms)


def _group(groups: Any, name: str) -> dict[str, Any] | None:
    """The named group of an ``XINFO GROUPS`` reply (none when the channel does not exist)."""
    if isinstance(groups, ResponseError) and "no such key" in str(groups).lower():
        return None  # no worker made the channel yet
    if isinstance(groups, Exception):
        raise groups
    for group in groups:
        found = group.get("name")
        if (found.decode() if isinstance(found, bytes) else found) == name:
            return dict(group)
    return None
