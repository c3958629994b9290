"""``flaky``: a stage that fails on purpose, to exercise retries, timeouts and compensation.

Params (from the stage spec, overridden per run by ``input.flaky``):
``fail_times`` (fail the first N attempts), ``permanent`` (fail permanently),
``sleep_seconds`` (sleep before answering, e.g. past the stage timeout),
``effect`` (record a compensable ``FlakyEffectApplied`` per attempt, default true).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from stageline.actors.stage import ActorRegistry, StageContext, StageError, StageResult
from stageline.events.envelope import DomainEvent, RecordedEvent


class FlakyEffectApplied(DomainEvent, frozen=True, kw_only=True):
    topic = "FlakyEffectApplied"

    key: str
    attempt: int


class FlakyEffectReverted(DomainEvent, frozen=True, kw_only=True):
    topic = "FlakyEffectReverted"

    compensates: str
    key: str


async def flaky(item: dict[str, Any], ctx: StageContext) -> StageResult:
    params = {**ctx.params, **(item.get("flaky") or {})}
    sleep = float(params.get("sleep_seconds", 0))
    if sleep > 0:
        await asyncio.sleep(sleep)
    effects: list[DomainEvent] = []
    if params.get("effect", True):
        effects.append(FlakyEffectApplied(key=str(params.get("key", "flaky")), attempt=ctx.attempt))
    if params.get("permanent"):
        raise StageError("flaky stage failed permanently", permanent=True, events=effects)
    if ctx.attempt <= int(params.get("fail_times", 0)):
        raise StageError(f"flaky stage failed on attempt {ctx.attempt}", events=effects)
    return StageResult(output={"flaky_attempts": ctx.attempt}, events=effects)


def revert(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    return [
        FlakyEffectReverted(compensates=str(e.event_id), key=e.data["key"])
        for e in effects
        if e.type == FlakyEffectApplied.topic
    ]


def register(actors: ActorRegistry) -> ActorRegistry:
    actors.register("flaky", flaky, compensate=revert)
    return actors
