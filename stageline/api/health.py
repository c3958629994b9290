"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from stageline.api import errors
from stageline.api.deps import CorrelationId, SettingsDep, StackDep
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import Alive, Ready, error_responses
from stageline.events.redis_store import failure, retried_errors

__all__ = ["CHECK_TIMEOUT_SECONDS", "router"]

router = Router(tags=["health"])

CHECK_TIMEOUT_SECONDS = 1.0


async def _check(probe: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    with retried_errors() as retried:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await probe()
        except Exception as exc:  # any failure means "not ready"; the reason goes in the answer
            reason = failure(exc, retried, CHECK_TIMEOUT_SECONDS)
            return {"ok": False, "ms": _ms(started), "error": reason}
    return {"ok": True, "ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@router.get("/healthz", response_model=None, responses={200: {"model": Alive}})
async def healthz() -> Response:
    """200 while the process can answer at all; touches no dependency."""
    return json_response({"status": "ok"})


@router.get(
    "/readyz", response_model=None, responses={200: {"model": Ready}, **error_responses(503)}
)
async def readyz(stack: StackDep, settings: SettingsDep, correlation_id: CorrelationId) -> Response:
    """200 when the store, the broker and the views each answer within a second, else 503.

    The 503 is the error envelope; `details.checks` says which dependency failed and why.
    """
    names = ("store", "broker", "views")
    results = await asyncio.gather(
        _check(stack.store.client.ping),
        _check(stack.broker_client.ping),
        _check(lambda: stack.views.checkpoint(settings.workspace)),
    )
    checks = dict(zip(names, results, strict=True))
    failed = [name for name, check in checks.items() if not check["ok"]]
    if not failed:
        return json_response({"status": "ready", "checks": checks})
    return errors.error_response(
        "UNAVAILABLE",
        f"not ready: {', '.join(failed)} did not answer",
        {"checks": checks},
        correlation_id=correlation_id,
    )
