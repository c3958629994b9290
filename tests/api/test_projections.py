"""``/v1/projections``: checkpoints and lag, and rebuilds run in the API's background."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from api_helpers import Projecting, assert_error, head, submit, until_status
from fastapi import FastAPI

from stageline.api.projections import Rebuilds
from stageline.errors import Conflict
from stageline.events.keys import graph_name
from stageline.projections.projector import RebuildResult
from stageline.projections.registry import NAMES, RUN_STATUS
from stageline.stack import Stack


async def _until_rebuilt(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    for _ in range(400):
        listed = (await client.get("/v1/projections")).json()
        [row] = [p for p in listed["projections"] if p["name"] == name]
        if row["rebuild"]["status"] != "running":
            return dict(listed, projection=row)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} still rebuilding: {row}")


async def test_each_projection_shows_its_checkpoint_and_lag(
    client: httpx.AsyncClient, projector: Projecting
) -> None:
    empty = (await client.get("/v1/projections")).json()
    assert empty["head"] == 0
    assert [(p["name"], p["checkpoint"], p["lag"], p["rebuild"]) for p in empty["projections"]] == [
        (name, 0, 0, None) for name in NAMES
    ]
    async with projector.paused():
        run = (await submit(client)).json()
        lagging = (await client.get("/v1/projections")).json()
        assert lagging["head"] >= run["position"] > 0  # the worker goes on meanwhile
        assert {p["name"]: p["lag"] for p in lagging["projections"]} == dict.fromkeys(
            NAMES, lagging["head"]
        )
    await until_status(client, run["run_id"], "completed", min_position=run["position"])
    done = await head(client)
    for _ in range(200):  # every projection catches up, not only run status
        listed = (await client.get("/v1/projections")).json()
        if all(p["checkpoint"] == done for p in listed["projections"]):
            break
        await asyncio.sleep(0.05)
    assert [(p["checkpoint"], p["lag"]) for p in listed["projections"]] == [(done, 0)] * len(NAMES)


async def test_a_rebuild_replays_the_view_from_the_log(
    client: httpx.AsyncClient, stack: Stack, projector: Projecting, workspace: str
) -> None:
    run = (await submit(client)).json()
    await until_status(client, run["run_id"], "completed", min_position=run["position"])
    position = await head(client)
    async with projector.paused():  # the rebuild alone writes the view
        # a view that no longer says what the log does
        graph = stack.views.db.select_graph(graph_name(workspace))
        await graph.query("MATCH (r:Run {id: $id}) SET r.status = 'bogus'", {"id": run["run_id"]})
        assert (await client.get(f"/v1/runs/{run['run_id']}")).json()["status"] == "bogus"

        started = await client.post(f"/v1/projections/{RUN_STATUS.name}/rebuild")
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "running"
        listed = await _until_rebuilt(client, RUN_STATUS.name)
        rebuild = listed["projection"]["rebuild"]
        assert rebuild["status"] == "finished", rebuild
        assert rebuild["events"] == rebuild["position"] == rebuild["head"] == position
        assert listed["projection"]["checkpoint"] == position
        assert listed["projection"]["lag"] == 0
        assert (await client.get(f"/v1/runs/{run['run_id']}")).json()["status"] == "completed"
        # the other views were left alone
        others = {p["name"]: p["rebuild"] for p in listed["projections"]}
        assert all(others[name] is None for name in NAMES if name != RUN_STATUS.name)


async def test_rebuilding_an_unknown_projection_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/v1/projections/nope/rebuild"), 404, "NOT_FOUND")


async def test_a_second_rebuild_of_the_same_view_is_409(
    client: httpx.AsyncClient, app: FastAPI, workspace: str
) -> None:
    release = asyncio.Event()

    async def held(ws: str, name: str, progress: Any) -> RebuildResult:
        await release.wait()
        return RebuildResult(name, head=0, events=0, seconds=0.0)

    rebuilds: Rebuilds = app.state.rebuilds
    rebuilds.start(workspace, RUN_STATUS.name, held)
    try:
        assert_error(
            await client.post(f"/v1/projections/{RUN_STATUS.name}/rebuild"), 409, "CONFLICT"
        )
    finally:
        release.set()
        await rebuilds.close()


# -- Rebuilds, without a server ---------------------------------------------------------


async def test_rebuilds_keep_how_each_one_ended() -> None:
    rebuilds = Rebuilds()
    release = asyncio.Event()

    async def ok(ws: str, name: str, progress: Any) -> RebuildResult:
        progress(5, 10)
        await release.wait()
        return RebuildResult(name, head=10, events=10, seconds=0.1)

    async def broken(ws: str, name: str, progress: Any) -> RebuildResult:
        raise RuntimeError("views gone")

    first = rebuilds.start("w", "a", ok)
    await asyncio.sleep(0)
    assert first.running and (first.position, first.head) == (5, 10)
    with pytest.raises(Conflict):
        rebuilds.start("w", "a", ok)
    other = rebuilds.start("w", "b", broken)  # another view, or workspace, is not held up
    release.set()
    await asyncio.sleep(0.01)
    assert first.view()["status"] == "finished" and (first.events, first.position) == (10, 10)
    assert other.view()["status"] == "failed" and other.error == "RuntimeError: views gone"
    again = rebuilds.start("w", "a", ok)  # once ended, it may run again
    assert rebuilds.last("w", "a") is again
    await rebuilds.close()
    assert again.view()["status"] == "failed" and "cancelled" in (again.error or "")
