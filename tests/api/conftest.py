"""API fixtures: one stack with a worker and a projector for the package, an app per test.

Every test talks to the real embedded server through ``create_app(stack=...)`` and
an in-process ``httpx`` client, in its own workspace (sent as ``X-Workspace``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from api_helpers import Projecting, connect
from fastapi import FastAPI

from stageline.api import create_app
from stageline.settings import Settings
from stageline.stack import Stack


@pytest.fixture(scope="module")
async def services(redis_url: str) -> AsyncIterator[tuple[Stack, Projecting]]:
    """A stack on the session's server with a running worker and projector."""
    async with AsyncExitStack() as cleanup:
        stack = await Stack.open(Settings(redis_url=redis_url))
        cleanup.push_async_callback(stack.close)
        worker = stack.worker()
        await worker.start()
        cleanup.push_async_callback(worker.stop)
        projecting = Projecting(stack)
        projecting.start()
        cleanup.push_async_callback(projecting.stop)
        yield stack, projecting


@pytest.fixture
def stack(services: tuple[Stack, Projecting]) -> Stack:
    return services[0]


@pytest.fixture
def projector(services: tuple[Stack, Projecting]) -> Projecting:
    return services[1]


@pytest.fixture
def app(stack: Stack) -> FastAPI:
    return create_app(stack=stack)


@pytest.fixture
async def client(app: FastAPI, workspace: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the test's app, sending the test's workspace on every request."""
    async with connect(app, workspace) as c:
        yield c


@pytest.fixture
def make_client(stack: Stack, workspace: str) -> Callable[..., Any]:
    """``async with make_client(**settings_overrides) as c``: a client of an app with other settings."""

    def make(**overrides: Any) -> Any:
        settings = stack.settings.model_copy(update=overrides)
        return connect(create_app(stack=stack, settings=settings), workspace)

    return make
