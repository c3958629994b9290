"""Shared fixtures: one real embedded redis-server + FalkorDB for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stageline.embedded import EmbeddedServer
from stageline.events.redis_store import RedisEventStore
from stageline.logs import configure_logging


@pytest.fixture(scope="session", autouse=True)
def _plain_logs() -> None:
    # structlog's default dev renderer draws rich tracebacks, ~1 s each: log like production
    configure_logging("INFO", "json")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    # unix socket paths are limited to ~107 bytes: keep the directory short
    data_dir = Path(tmp_path_factory.mktemp("srv", numbered=True))
    srv = EmbeddedServer(data_dir, appendfsync="everysec")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def redis_url(server: EmbeddedServer) -> str:
    return server.url


@pytest.fixture
def workspace() -> str:
    """A fresh workspace per test: tests share the server but never each other's data."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisEventStore]:
    store = RedisEventStore.from_url(redis_url)
    try:
        yield store
    finally:
        await store.close()
