from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from stageline.embedded import EmbeddedServer
from stageline.projections import FalkorDBViews


@pytest.fixture(scope="session")
def own_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server for the projector tests alone.

    A projector follows every workspace on its server, so one left running by
    another package's fixtures would write to the views a test watches: always
    correctly (the checkpoint guard sees to that), but in place of the
    projector under test.
    """
    server = EmbeddedServer(tmp_path_factory.mktemp("proj", numbered=True))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def views(redis_url: str) -> AsyncIterator[FalkorDBViews]:
    views = FalkorDBViews.from_url(redis_url)
    try:
        yield views
    finally:
        await views.close()
