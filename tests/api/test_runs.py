"""``/v1/runs``: submit, wait, read-your-writes, idempotency, list, stats, run events."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from api_helpers import (
    Projecting,
    assert_error,
    broker_down,
    connect,
    fields,
    reconcile,
    submit,
    until_status,
)
from structlog.testing import capture_logs

from stageline.actors.builtin.memory import EntityMentioned
from stageline.api import create_app
from stageline.events import NewEvent, new_event
from stageline.events.keys import pipeline_stream
from stageline.projections import ENTITIES, RUN_STATUS, Projector
from stageline.stack import Stack

STAGES = ["normalize", "classify", "extract", "discover", "summarize"]


async def run_submitted_count(stack: Stack, workspace: str) -> int:
    events = await stack.store.read_log(workspace, after=0, limit=10_000)
    return sum(1 for e in events if e.type == "RunSubmitted")


async def test_submit_with_wait_answers_the_completed_run(
    client: httpx.AsyncClient, workspace: str
) -> None:
    r = await submit(client, wait=20, id="m-1", source="chat", metadata={"k": [1, 2]})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "completed"
    assert run["pipeline"] == "memory-ingest"
    assert run["completed_at"] is not None and run["error"] is None
    assert [s["name"] for s in run["stages"]] == STAGES
    for stage in run["stages"]:
        assert stage["status"] == "completed", stage
        assert stage["attempts"] >= 1
        assert stage["started_at"] is not None and stage["ended_at"] is not None
        assert stage["started_at"] <= stage["ended_at"]
        assert isinstance(stage["duration_ms"], int | float) and stage["duration_ms"] >= 0


async def test_submit_without_wait_answers_202_and_where_to_read(
    client: httpx.AsyncClient, workspace: str
) -> None:
    r = await submit(client)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"run_id", "stream", "position", "deduplicated", "status_url"}
    assert body["stream"] == f"run-{body['run_id']}"
    assert body["deduplicated"] is False
    assert body["position"] >= 1
    assert body["status_url"] == f"/v1/runs/{body['run_id']}"
    assert r.headers["Location"] == body["status_url"]


async def test_read_your_writes_with_min_position(client: httpx.AsyncClient) -> None:
    accepted = (await submit(client)).json()
    r = await client.get(accepted["status_url"], params={"min_position": accepted["position"]})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == accepted["run_id"]
    assert r.json()["seq"] == accepted["position"]
    listed = await client.get("/v1/runs", params={"min_position": accepted["position"]})
    assert [run["id"] for run in listed.json()["runs"]] == [accepted["run_id"]]
    stats = await client.get("/v1/runs/stats", params={"min_position": accepted["position"]})
    assert stats.json()["total"] == 1


async def test_each_read_waits_for_the_projection_it_reads(
    stack: Stack, projector: Projecting, workspace: str, make_client: Callable[..., Any]
) -> None:
    mention = EntityMentioned(entity="Ada", entity_type="person", surface="Ada", start=0, end=3)
    async with make_client(read_wait_seconds=0.2) as client, projector.paused():
        await stack.store.append(workspace, "notes-1", [new_event(mention)])
        deleted = NewEvent(type="PipelineDeleted", data={"name": "mine", "version": 1})
        await stack.store.append(workspace, pipeline_stream("mine"), [deleted])
        head = await stack.store.head(workspace)
        # only run_status has caught up: the other views are still at 0
        await Projector(stack.store, stack.views, projections=(RUN_STATUS,)).catch_up(workspace)
        at = {"min_position": head}

        for path in ("/v1/runs", "/v1/runs/stats", "/v1/dlq"):
            assert (await client.get(path, params=at)).status_code == 200, path
        for path, projection in (("/v1/entities", "entities"), ("/v1/pipelines", "pipelines")):
            error = assert_error(await client.get(path, params=at), 503, "UNAVAILABLE")
            assert error["details"] == {
                "min_position": head,
                "reached": 0,
                "projection": projection,
            }
            assert projection in error["message"]
        entity = await client.get("/v1/entities/person/Ada", params=at)
        assert assert_error(entity, 503, "UNAVAILABLE")["details"]["projection"] == "entities"

        await Projector(stack.store, stack.views, projections=(ENTITIES,)).catch_up(workspace)
        r = await client.get("/v1/entities", params=at)
        assert r.status_code == 200 and [e["name"] for e in r.json()["entities"]] == ["Ada"]
        assert (await client.get("/v1/entities/person/Ada", params=at)).json()["mentions"] == 1
        assert_error(await client.get("/v1/pipelines", params=at), 503, "UNAVAILABLE")


async def test_min_position_not_reached_in_time_is_503_naming_the_position_reached(
    stack: Stack,
    projector: Projecting,
    workspace: str,
    make_client: Callable[..., Any],
) -> None:
    async with make_client(read_wait_seconds=0.2) as client:
        first = (await submit(client, wait=20)).json()
        async with projector.paused():
            # read once paused: the projector may still be writing what followed the run
            reached = await stack.views.checkpoint(workspace)
            assert reached >= first["seq"]
            accepted = (await submit(client)).json()
            r = await client.get(
                accepted["status_url"], params={"min_position": accepted["position"]}
            )
            error = assert_error(r, 503, "UNAVAILABLE")
            assert error["details"] == {
                "min_position": accepted["position"],
                "reached": reached,
                "projection": "run_status",
            }
            assert str(reached) in error["message"]
            assert r.headers["Retry-After"] == "1"
            for path in ("/v1/runs", "/v1/runs/stats"):
                r = await client.get(path, params={"min_position": accepted["position"]})
                assert_error(r, 503, "UNAVAILABLE")
            # without min_position the lagging view is read as it is
            missing = await client.get(accepted["status_url"])
            error = assert_error(missing, 404, "NOT_FOUND")
            assert error["details"]["in_log"] is True
            assert "min_position" in error["message"]
            # a wait that runs out answers 202 with the run as far as the view has it
            timed_out = await submit(client, wait=0.2)
            assert timed_out.status_code == 202
            assert timed_out.json()["run"] is None
            assert {"run_id", "position", "status_url"} <= set(timed_out.json())
        r = await client.get(accepted["status_url"], params={"min_position": accepted["position"]})
        assert r.status_code == 200, r.text


async def test_a_run_stream_with_no_run_submitted_is_a_404_saying_it_is_not_a_run(
    client: httpx.AsyncClient, stack: Stack, projector: Projecting, workspace: str
) -> None:
    # a run stream without RunSubmitted (no client may append one now; older logs hold them)
    note = NewEvent(type="NoteTaken", data={"note": "not a run"})
    position = (await stack.store.append(workspace, "run-by-hand", [note])).positions[-1]
    r = await client.get("/v1/runs/by-hand", params={"min_position": position})
    error = assert_error(r, 404, "NOT_FOUND")
    # it used to say "pass the position its submit returned as min_position", which it was
    assert "no RunSubmitted" in error["message"], error
    assert "/v1/runs/by-hand/events" in error["message"]
    assert error["details"] == {
        "run_id": "by-hand",
        "in_log": True,
        "run": False,
        "position": position,
    }
    async with projector.paused():  # its events not applied yet: min_position says how long
        note = NewEvent(type="NoteTaken", data={})
        later = (await stack.store.append(workspace, "run-later", [note])).positions[-1]
        r = await client.get("/v1/runs/later", params={"min_position": position})
        error = assert_error(r, 404, "NOT_FOUND")
        assert f"pass min_position={later}" in error["message"], error
        assert error["details"] == {"run_id": "later", "in_log": True, "position": later}


async def test_min_position_past_the_head_is_invalid(client: httpx.AsyncClient) -> None:
    accepted = (await submit(client)).json()
    head = accepted["position"]
    r = await client.get("/v1/runs", params={"min_position": head + 1000})
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["details"]["head"] >= head
    r = await client.get("/v1/runs", params={"min_position": -1})
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["min_position"]


async def test_idempotency_key_means_the_same_run_appended_once(
    client: httpx.AsyncClient, app: Any, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await submit(client, "the same text", headers=key, wait=20)
    assert first.status_code == 200, first.text
    again = await submit(client, "the same text", headers=key)
    assert again.status_code == 202
    assert again.json()["run_id"] == first.json()["id"]
    assert again.json()["deduplicated"] is True
    assert await run_submitted_count(stack, workspace) == 1
    head = await stack.store.head(workspace)

    other = await submit(client, "another text", headers=key)
    error = assert_error(other, 409, "CONFLICT")
    assert "Idempotency-Key" in error["message"]
    assert await stack.store.head(workspace) == head

    # the key is per workspace: elsewhere it starts a run of its own
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"X-Workspace": workspace + "b"},
    ) as elsewhere:
        r = await submit(elsewhere, "another text", headers=key)
    assert r.status_code == 202 and r.json()["deduplicated"] is False


async def test_idempotency_key_longer_than_200_is_rejected(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await submit(client, headers={"Idempotency-Key": "k" * 201})
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["Idempotency-Key"]
    assert await stack.store.head(workspace) == 0


async def test_list_filters_by_status_and_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    done = [(await submit(client, f"item number {i}", wait=20)).json() for i in range(3)]
    assert [run["status"] for run in done] == ["completed"] * 3
    # only control characters: accepted here, then the normalize stage fails the run
    failed = (await submit(client, "\x00\x01", wait=20)).json()
    assert failed["status"] == "failed"
    assert failed["error"]
    assert [s["status"] for s in failed["stages"]] == ["failed"] + ["pending"] * 4

    r = await client.get("/v1/runs", params={"status": "failed"})
    assert [run["id"] for run in r.json()["runs"]] == [failed["id"]]
    assert r.json()["next_cursor"] is None

    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"status": "completed", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/v1/runs", params=params)).json()
        pages += 1
        ids += [run["id"] for run in page["runs"]]
        assert all(run["status"] == "completed" for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert ids == [run["id"] for run in reversed(done)]  # newest first

    r = await client.get("/v1/runs", params={"pipeline": "other"})
    assert r.json() == {"runs": [], "next_cursor": None}


async def test_stats_count_runs_by_status_with_stage_timings(client: httpx.AsyncClient) -> None:
    for i in range(2):
        assert (await submit(client, f"stats item {i}", wait=20)).json()["status"] == "completed"
    assert (await submit(client, "\x01", wait=20)).json()["status"] == "failed"
    stats = (await client.get("/v1/runs/stats")).json()
    assert stats["counts"]["completed"] == 2
    assert stats["counts"]["failed"] == 1
    assert stats["counts"]["processing"] == 0
    assert stats["total"] == 3
    assert set(stats["stages"]) == set(STAGES)
    assert stats["stages"]["summarize"]["count"] == 2
    assert stats["stages"]["normalize"]["count"] == 2  # the failed run's attempt did not complete
    for timing in stats["stages"].values():
        assert 0 <= timing["p50_ms"] <= timing["p95_ms"]


async def test_run_events_come_from_the_log(client: httpx.AsyncClient) -> None:
    r = await submit(client, wait=20, headers={"X-Correlation-ID": "trace-abc"})
    run_id = r.json()["id"]
    page = (await client.get(f"/v1/runs/{run_id}/events")).json()
    events = page["events"]
    assert page["stream"] == f"run-{run_id}"
    assert events[0]["type"] == "RunSubmitted"
    assert events[-1]["type"] == "RunCompleted"
    assert [e["version"] for e in events] == list(range(len(events)))
    assert page["version"] == len(events) - 1
    assert page["next_from_version"] is None
    assert events[0]["correlation_id"] == "trace-abc"
    assert events[0]["data"]["input"]["text"].startswith("Met Alice")

    newest = (
        await client.get(f"/v1/runs/{run_id}/events", params={"backwards": True, "limit": 2})
    ).json()
    assert [e["version"] for e in newest["events"]] == [page["version"], page["version"] - 1]
    assert newest["next_from_version"] == page["version"] - 2
    rest = (
        await client.get(f"/v1/runs/{run_id}/events", params={"from_version": 1, "limit": 2})
    ).json()
    assert [e["version"] for e in rest["events"]] == [1, 2]
    assert rest["next_from_version"] == 3


async def test_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/v1/runs/nope", "/v1/runs/nope/events"):
        error = assert_error(await client.get(path), 404, "NOT_FOUND")
        assert "nope" in error["message"]
    assert_error(await client.get("/v1/runs/bad%20id"), 400, "INVALID_ARGUMENT")


async def test_a_run_is_invisible_from_another_workspace(
    client: httpx.AsyncClient, app: Any, workspace: str
) -> None:
    run = (await submit(client, wait=20)).json()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"X-Workspace": workspace + "-other"},
    ) as other:
        assert_error(await other.get(f"/v1/runs/{run['id']}"), 404, "NOT_FOUND")
        assert_error(await other.get(f"/v1/runs/{run['id']}/events"), 404, "NOT_FOUND")
        assert (await other.get("/v1/runs")).json()["runs"] == []
        assert (await other.get("/v1/runs/stats")).json()["total"] == 0
    assert (await client.get(f"/v1/runs/{run['id']}")).status_code == 200


async def test_a_bad_parameter_is_refused_before_any_wait_for_min_position(
    client: httpx.AsyncClient, projector: Projecting
) -> None:
    accepted = (await submit(client)).json()
    async with projector.paused():
        later = (await submit(client)).json()
        started = time.perf_counter()
        r = await client.get("/v1/runs", params={"min_position": later["position"], "limit": 0})
        assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["limit"]
        assert time.perf_counter() - started < 1.0  # read_wait_seconds is 5
    assert accepted["position"] < later["position"]


async def test_stats_take_a_duration_stored_as_null(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    # an older version stored a non-finite duration_ms as null: the view has a completed
    # stage without a duration, which must not break the workspace's stats for good
    events = [
        ("RunSubmitted", {"pipeline": "p", "pipeline_version": 1, "stages": ["only"]}),
        ("StageStarted", {"stage": "only", "index": 0, "attempt": 1}),
        ("StageCompleted", {"stage": "only", "index": 0, "duration_ms": None}),
    ]
    result = await stack.store.append(
        workspace, "run-nulled", [NewEvent(type=t, data=data) for t, data in events]
    )
    stats = await client.get("/v1/runs/stats", params={"min_position": result.positions[-1]})
    assert stats.status_code == 200, stats.text
    # no duration to time it by: listed as a stage that never completed is (not at all)
    assert stats.json()["stages"] == {}
    assert stats.json()["counts"]["processing"] == 1


async def test_a_run_recorded_while_the_broker_is_down_is_accepted_and_handed_on_later(
    stack: Stack, workspace: str
) -> None:
    async with broker_down(stack) as down, connect(create_app(stack=down), workspace) as client:
        with capture_logs() as logs:
            r = await submit(client)
        # recorded: an error here made clients submit again, and each run went on (twice)
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert await run_submitted_count(stack, workspace) == 1
        [warning] = [e for e in logs if e["event"] == "bus.hand_on_failed"]
        assert warning["runs"] == [accepted["run_id"]]
        assert warning["error"].startswith("ConnectionError: ")
    assert await reconcile(stack, workspace, accepted["position"]) == 1
    async with connect(create_app(stack=stack), workspace) as client:
        run = await until_status(
            client, accepted["run_id"], "completed", min_position=accepted["position"]
        )
    assert [s["status"] for s in run["stages"]] == ["completed"] * len(STAGES)


async def test_stats_of_one_pipeline_leave_out_other_pipelines_stages_of_the_same_name(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    for pipeline, duration, ended in (("etl", 500.0, True), ("ingest", 2.0, False)):
        events = [
            ("RunSubmitted", {"pipeline": pipeline, "pipeline_version": 1, "stages": ["extract"]}),
            ("StageStarted", {"stage": "extract", "index": 0, "attempt": 1}),
            ("StageCompleted", {"stage": "extract", "index": 0, "duration_ms": duration}),
        ]
        if ended:
            events.append(("RunCompleted", {}))
        result = await stack.store.append(
            workspace, f"run-{pipeline}", [NewEvent(type=t, data=data) for t, data in events]
        )
    at = {"min_position": result.positions[-1]}
    merged = (await client.get("/v1/runs/stats", params=at)).json()
    assert merged["stages"]["extract"]["count"] == 2 and merged["total"] == 2

    reply = await client.get("/v1/runs/stats", params={**at, "pipeline": "etl"})
    etl = reply.json()
    assert etl["stages"] == {"extract": {"count": 1, "p50_ms": 500.0, "p95_ms": 500.0}}
    assert '"count":1,' in reply.text  # an integer, as the schema says
    assert etl["total"] == 1 and etl["counts"]["completed"] == 1
    ingest = (await client.get("/v1/runs/stats", params={**at, "pipeline": "ingest"})).json()
    assert ingest["stages"]["extract"]["p95_ms"] == 2.0
    assert ingest["total"] == 1 and ingest["counts"]["processing"] == 1
    none = (await client.get("/v1/runs/stats", params={**at, "pipeline": "nope"})).json()
    assert (
        none["stages"] == {} and none["total"] == 0 and set(none["counts"]) == set(merged["counts"])
    )
    r = await client.get("/v1/runs/stats", params={"pipeline": ""})
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["pipeline"]
