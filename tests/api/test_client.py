"""``stageline.client`` against the real app on a real port (here, not in ``tests/``, for
the API fixtures): reported runs, retries that write nothing twice, errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import httpx
import pytest
from api_helpers import served, submit, submit_flaky
from fastapi import FastAPI

from stageline.actors.stage import MAX_ERROR_CHARS as STAGES_MAX_ERROR_CHARS
from stageline.client import (
    MAX_ERROR_CHARS,
    REPORTED_VERSION,
    ApiError,
    AsyncRunReport,
    AsyncStageline,
    Stageline,
    Unreachable,
    VersionConflict,
    next_delay,
    to_json,
)
from stageline.stack import Stack


def report_nightly_etl(url: str, workspace: str) -> tuple[str, int, dict[str, Any]]:
    """A three-stage run of an outside pipeline through the blocking client (in a thread:
    the server runs in the test's event loop)."""
    with Stageline(url, workspace) as client:
        with client.report(
            "nightly-etl", stages=["extract", "transform", "load"], input={"id": "2026-11-23"}
        ) as run:
            for name in run.stages:
                with run.stage(name) as s:
                    time.sleep(0.02)
                    s.metadata["rows"] = 3
            run.output["loaded"] = 3
        assert run.position is not None
        return run.run_id, run.position, client.run(run.run_id, min_position=run.position)


async def test_a_reported_run_shows_as_a_completed_run_with_its_stages(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    async with served(app) as url:
        run_id, position, run = await asyncio.to_thread(report_nightly_etl, url, workspace)
    assert run["id"] == run_id
    assert run["pipeline"] == "nightly-etl"
    assert run["pipeline_version"] == REPORTED_VERSION
    assert run["status"] == "completed"
    assert [s["name"] for s in run["stages"]] == ["extract", "transform", "load"]
    for stage in run["stages"]:
        assert stage["status"] == "completed" and stage["attempts"] == 1, stage
        assert stage["duration_ms"] >= 20 and stage["metadata"] == {"rows": 3}, stage
        assert stage["started_at"] <= stage["ended_at"]
    listed = await client.get(
        "/v1/runs", params={"pipeline": "nightly-etl", "min_position": position}
    )
    assert [r["id"] for r in listed.json()["runs"]] == [run_id]
    stats = (await client.get("/v1/runs/stats", params={"min_position": position})).json()
    assert stats["counts"]["completed"] == 1
    assert set(stats["stages"]) == {"extract", "transform", "load"}
    events = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
    assert events[-1]["data"] == {"output": {"loaded": 3}}


async def test_a_stage_that_raises_fails_the_run_and_the_error_reaches_the_caller(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    boom = RuntimeError("the warehouse is read-only")
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(RuntimeError) as raised:
            async with stageline.report("nightly-etl", ["extract", "transform", "load"]) as run:
                async with run.stage("extract"):
                    pass
                async with run.stage("transform"):
                    raise boom
        assert raised.value is boom
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "failed"
    assert view["error"] == "RuntimeError: the warehouse is read-only"
    stages = {s["name"]: s for s in view["stages"]}
    assert stages["extract"]["status"] == "completed"
    assert stages["transform"]["status"] == "failed"
    assert stages["transform"]["error"] == "RuntimeError: the warehouse is read-only"
    assert stages["load"]["status"] == "pending"
    events = (await client.get(f"/v1/runs/{run.run_id}/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "RunSubmitted",
        "StageStarted",
        "StageCompleted",
        "StageStarted",
        "StageFailed",
        "RunFailed",
    ]
    assert events[-1]["data"]["stage"] == "transform"


async def test_a_huge_error_message_is_cut_as_stageline_cuts_its_own_stages(
    app: FastAPI, workspace: str
) -> None:
    huge = RuntimeError("x" * 2_000_000)  # 2 MB: past the API's 1 MB body limit
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(RuntimeError) as raised:
            async with stageline.report("nightly-etl", ["extract"]) as run, run.stage("extract"):
                raise huge
        assert raised.value is huge
        assert not getattr(raised.value, "__notes__", None)  # "could not record this failure"
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    # it used to be a 413 for StageFailed and RunFailed: the run stayed processing
    assert view["status"] == "failed"
    assert view["error"] == "RuntimeError: " + "x" * MAX_ERROR_CHARS
    [stage] = view["stages"]
    assert stage["status"] == "failed"
    assert stage["error"] == "RuntimeError: " + "x" * MAX_ERROR_CHARS


def test_the_client_cuts_errors_where_stageline_cuts_its_own() -> None:
    assert MAX_ERROR_CHARS == STAGES_MAX_ERROR_CHARS


async def test_stages_of_one_reported_run_may_run_concurrently(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    async def stage(run: AsyncRunReport, name: str, seconds: float) -> None:
        async with run.stage(name) as s:
            await asyncio.sleep(seconds)
            s.metadata["slept"] = seconds

    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        # it used to be "409 CONFLICT: Idempotency-Key was already used for a different request"
        async with stageline.report("fan-out", ["a", "b", "c"]) as run:
            await asyncio.gather(stage(run, "a", 0.1), stage(run, "b", 0), stage(run, "c", 0.05))
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "completed"
    for s in view["stages"]:
        assert (s["status"], s["attempts"]) == ("completed", 1), s
    events = (await client.get(f"/v1/runs/{run.run_id}/events")).json()["events"]
    assert [e["type"] for e in events].count("StageCompleted") == 3
    assert events[-1]["type"] == "RunCompleted"


def report_in_threads(url: str, workspace: str) -> tuple[str, int | None]:
    with Stageline(url, workspace) as client:
        with client.report("fan-out", ["a", "b", "c"]) as run:

            def stage(name: str) -> None:
                with run.stage(name):
                    time.sleep(0.05)

            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(stage, run.stages))
        return run.run_id, run.position


async def test_stages_of_one_blocking_reported_run_may_run_in_threads(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        run_id, position = await asyncio.to_thread(report_in_threads, url, workspace)
        view = await stageline.run(run_id, min_position=position)
    assert view["status"] == "completed"
    assert [s["status"] for s in view["stages"]] == ["completed"] * 3


async def test_a_concurrent_stage_that_fails_is_the_one_the_run_failure_names(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    async def stage(run: AsyncRunReport, name: str) -> None:
        async with run.stage(name):
            if name == "b":
                raise RuntimeError("b broke")
            await asyncio.sleep(5)

    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(ExceptionGroup):
            async with (
                stageline.report("fan-out", ["a", "b", "c"]) as run,
                asyncio.TaskGroup() as group,
            ):
                for name in run.stages:
                    group.create_task(stage(run, name))
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "failed"
    stages = {s["name"]: s for s in view["stages"]}
    assert stages["b"]["error"] == "RuntimeError: b broke"
    # the others were cancelled by the task group: recorded failed, none left active
    for name in "ac":
        assert stages[name]["status"] == "failed", stages[name]
        assert stages[name]["error"].startswith("CancelledError"), stages[name]
    events = (await client.get(f"/v1/runs/{run.run_id}/events")).json()["events"]
    assert events[-1]["type"] == "RunFailed"
    assert events[-1]["data"]["stage"] == "b"


class LostAnswers(httpx.AsyncBaseTransport):
    """Sends each write on, then loses the answer of its first attempt: the connection
    drops (``drop``) or the answer is a 503."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[bytes] = []
        """Each write's body, as it went out."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST":
            return response
        self.sent.append(request.content)
        if self.sent.count(request.content) > 1:
            return response
        await response.aread()
        await response.aclose()
        if self.how == "drop":
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(503, json={"error": {"code": "UNAVAILABLE"}}, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("how", ["drop", "503"])
async def test_a_write_whose_answer_was_lost_is_retried_without_writing_twice(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, how: str
) -> None:
    transport = LostAnswers(how)
    async with (
        served(app) as url,
        AsyncStageline(url, workspace, transport=transport, backoff=0.01) as stageline,
    ):
        async with stageline.report("nightly-etl", ["extract"]) as run, run.stage("extract"):
            pass
        appended = await stageline.append("order-1", [{"type": "OrderPlaced", "data": {"n": 1}}])
    assert appended["deduplicated"] is True  # the answer to the retry
    # every write went out twice, the same both times
    assert len(transport.sent) == 10 and len(set(transport.sent)) == 5
    events = (await client.get(f"/v1/runs/{run.run_id}/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "RunSubmitted",
        "StageStarted",
        "StageCompleted",
        "RunCompleted",
    ]
    orders = (await client.get("/v1/streams/order-1/events")).json()["events"]
    assert [e["data"] for e in orders] == [{"n": 1}]


async def test_api_errors_are_raised_with_their_code_and_message(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(ApiError) as missing:
            await stageline.run("no-such-run")
        assert (missing.value.status, missing.value.code) == (404, "NOT_FOUND")
        assert "no-such-run" in missing.value.message
        assert missing.value.details["run_id"] == "no-such-run"
        for run_id in ("../runs/stats", "..", "x?min_position=1"):  # one run's, whatever it is
            with pytest.raises(ApiError) as missing:
                await stageline.run(run_id)
            assert missing.value.status in (400, 404), run_id  # not a run id, or no such run
        with pytest.raises(ApiError) as elsewhere:  # a stream's name, not a route
            await stageline.append("../runs", [{"type": "A", "data": {}}])
        assert (elsewhere.value.status, elsewhere.value.code) == (404, "NOT_FOUND")
        with pytest.raises(ApiError) as invalid:
            await stageline.append("run-x", [{"type": "StageStarted", "data": {"index": 0}}])
        assert (invalid.value.status, invalid.value.code) == (400, "INVALID_ARGUMENT")
        assert "stage" in str(invalid.value)
        with pytest.raises(ApiError) as unknown:
            await stageline.submit("no-such-pipeline", {"text": "x"})
        assert (unknown.value.status, unknown.value.code) == (404, "NOT_FOUND")
        assert str(unknown.value).startswith("404 NOT_FOUND: ")
        # a second reporter of the same run carries it on: the first cannot write over it
        async with stageline.report("nightly-etl", ["extract"]) as run:
            async with (
                stageline.report("nightly-etl", ["extract"], run_id=run.run_id) as second,
                second.stage("extract"),
            ):
                with pytest.raises(VersionConflict) as clash:
                    async with run.stage("extract"):
                        pass
            assert (clash.value.status, clash.value.code) == (409, "CONFLICT")
            assert clash.value.actual_version == 1
    with pytest.raises(Unreachable) as gone:
        await AsyncStageline(url, workspace, retries=1, backoff=0.01).run("r")
    assert gone.value.code == "UNAVAILABLE" and gone.value.status is None
    assert str(gone.value).startswith("UNAVAILABLE: ConnectError: ")  # no status to print


async def test_a_report_that_skips_a_stage_or_repeats_a_completed_one_is_refused(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(ApiError) as refused:
            async with stageline.report("etl", ["extract", "transform", "load"]) as run:
                async with run.stage("load"):
                    pass
                async with run.stage("extract"):
                    pass
                with pytest.raises(ApiError) as again:
                    async with run.stage("extract"):
                        pass
                assert (again.value.status, again.value.details["rule"]) == (409, "attempts")
        # leaving the run without transform: it did not complete
        assert (refused.value.status, refused.value.details["rule"]) == (409, "stages-done")
        assert "['transform']" in refused.value.message
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "processing"


async def test_the_reconciler_leaves_a_reported_run_alone(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    # named like a built-in on purpose: the recorded version is what keeps stageline off it
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        report = stageline.report("memory-ingest", ["extract"], {"text": "x"})
        async with report as run, run.stage("extract"):
            assert run.position is not None
            await stageline.run(run.run_id, min_position=run.position)  # the view has it
            reconciler = stack.reconciler()
            reconciler.idle_seconds = 0
            assert await reconciler.pass_once(workspace, now=2**40) == 0
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "completed"
    assert [s["attempts"] for s in view["stages"]] == [1]


def report_with_metadata(url: str, workspace: str, value: Any) -> tuple[str, int | None]:
    """A one-stage run through the blocking client whose stage's metadata holds ``value``."""
    with Stageline(url, workspace) as client:
        try:
            with client.report("odd-values", ["only"]) as run, run.stage("only") as s:
                s.metadata["value"] = value
        except ValueError as exc:
            return f"{type(exc).__name__}: {exc}", run.position
        return "", run.position


WHEN = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
TEXTS = [
    (WHEN, "2026-11-23T06:00:00+00:00"),
    (uuid.UUID(int=7), str(uuid.UUID(int=7))),
    (Decimal("1.10"), "1.10"),
    (PurePosixPath("/data/in.csv"), "/data/in.csv"),
]


@pytest.mark.parametrize(("value", "text"), TEXTS, ids=["datetime", "uuid", "decimal", "path"])
async def test_a_stage_metadata_value_json_lacks_is_recorded_as_text(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, value: Any, text: str
) -> None:
    async with served(app) as url:
        raised, position = await asyncio.to_thread(report_with_metadata, url, workspace, value)
    assert raised == "" and position is not None
    listed = await client.get(
        "/v1/runs", params={"pipeline": "odd-values", "min_position": position}
    )
    [summary] = listed.json()["runs"]
    view = (await client.get(f"/v1/runs/{summary['id']}")).json()
    assert view["status"] == "completed"
    assert view["stages"][0]["metadata"] == {"value": text}


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_a_stage_metadata_value_json_cannot_hold_fails_the_stage_with_why(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, sync: bool
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        if sync:
            raised, position = await asyncio.to_thread(
                report_with_metadata, url, workspace, float("nan")
            )
        else:
            with pytest.raises(ValueError) as caught:
                async with (
                    stageline.report("odd-values", ["only"]) as run,
                    run.stage("only") as s,
                ):
                    s.metadata["value"] = float("inf")
            raised, position = f"ValueError: {caught.value}", run.position
        assert position is not None
        assert raised.startswith("ValueError: stage 'only''s output or metadata cannot be recorded")
        listed = await client.get(
            "/v1/runs", params={"pipeline": "odd-values", "min_position": position}
        )
        [summary] = listed.json()["runs"]
        view = await stageline.run(summary["id"], min_position=position)
    assert view["status"] == "failed"
    assert view["error"] == raised
    [stage] = view["stages"]
    assert (stage["status"], stage["error"]) == ("failed", raised)


async def test_a_run_output_json_cannot_hold_fails_the_run_with_why(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        with pytest.raises(TypeError, match="the run's output cannot be recorded"):
            async with stageline.report("odd-values", ["only"]) as run:
                async with run.stage("only"):
                    pass
                run.output["odd"] = object()
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "failed"
    assert view["stages"][0]["status"] == "completed"


def test_to_json_writes_text_for_dates_uuids_decimals_paths_and_refuses_the_rest() -> None:
    for value, text in TEXTS:
        assert to_json({"v": value}) == b'{"v":"' + text.encode() + b'"}'
    for number in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN and infinities"):
            to_json([number])
    with pytest.raises(TypeError, match="a set cannot be sent as JSON"):
        to_json({"v": {1}})


def test_report_refuses_a_stage_it_was_not_told_of() -> None:
    with Stageline("http://127.0.0.1:9") as stageline:
        report = stageline.report("p", ["a", "b"], run_id=uuid.uuid4().hex)
        with pytest.raises(ValueError, match="'c' is not one of"):
            report.stage("c")
        with pytest.raises(ValueError, match="distinct"):
            stageline.report("p", ["a", "a"])


def test_next_delay_retries_lost_connections_and_503_only() -> None:
    request = httpx.Request("POST", "http://x/v1/runs")
    dropped = httpx.ReadError("reset", request=request)
    assert [next_delay(n, dropped, retries=3, backoff=0.1) for n in (1, 2, 3, 4)] == [
        0.1,
        0.2,
        0.4,
        None,
    ]
    busy = httpx.Response(503, headers={"Retry-After": "1"}, request=request)
    assert next_delay(1, busy) == 1.0
    assert next_delay(1, httpx.Response(503, headers={"Retry-After": "600"})) == 5.0
    for status in (200, 400, 404, 409, 500):
        assert next_delay(1, httpx.Response(status, request=request)) is None


def read_back_in_threads(url: str, workspace: str, position: int, ids: list[str]) -> dict[str, Any]:
    """What the blocking client reads of the workspace, and its operations' errors on
    reported runs (in a thread: the server runs in the test's event loop)."""
    with Stageline(url, workspace) as client:
        refused = []
        for operation, run_id in ((client.undo, ids[0]), (client.retry, ids[1])):
            with pytest.raises(ApiError) as raised:
                operation(run_id)
            refused.append((raised.value.status, raised.value.details["pipeline_version"]))
        with pytest.raises(ApiError) as ended:
            client.cancel(ids[2], reason="too late")
        refused.append((ended.value.status, ended.value.details["status"]))
        first = client.runs(limit=2, min_position=position)
        return {
            "refused": refused,
            "first": first,
            "rest": client.runs(limit=2, cursor=first["next_cursor"]),
            "all": [r["id"] for r in client.iter_runs(page_size=1, min_position=position)],
            "failed": [r["id"] for r in client.iter_runs(status="failed")],
            "stats": client.stats(pipeline="nightly-etl", min_position=position),
        }


async def test_the_clients_list_runs_page_by_page_and_read_stats_and_streams(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        ids = []
        for fail in (False, True, False):
            with contextlib.suppress(RuntimeError):
                async with stageline.report("nightly-etl", ["extract", "load"]) as run:
                    ids.append(run.run_id)
                    async with run.stage("extract"):
                        if fail:
                            raise RuntimeError("no rows")
                    async with run.stage("load"):
                        pass
        assert run.position is not None
        blocking = await asyncio.to_thread(read_back_in_threads, url, workspace, run.position, ids)
        listed = [r["id"] async for r in stageline.iter_runs(page_size=2)]
        failed = [r["id"] async for r in stageline.iter_runs(status="failed", page_size=1)]
        page = await stageline.runs(pipeline="nightly-etl", limit=5)
        none = await stageline.runs(pipeline="another")
        stats = await stageline.stats()
        stream = f"run-{ids[0]}"
        events = await stageline.events(stream, limit=3)
        rest = await stageline.events(stream, from_version=events["next_from_version"])
        newest = await stageline.events(stream, limit=1, backwards=True)
        with pytest.raises(ApiError) as bad:
            await stageline.runs(status="no-such-status")

    assert blocking["refused"] == [
        (409, REPORTED_VERSION),
        (409, REPORTED_VERSION),
        (409, "completed"),
    ]
    newest_first = ids[::-1]
    assert [r["id"] for r in blocking["first"]["runs"]] == newest_first[:2]
    assert [r["id"] for r in blocking["rest"]["runs"]] == newest_first[2:]
    assert blocking["rest"]["next_cursor"] is None
    assert blocking["all"] == listed == [r["id"] for r in page["runs"]] == newest_first
    assert blocking["failed"] == failed == [ids[1]]
    assert page["next_cursor"] is None and none == {"runs": [], "next_cursor": None}
    assert (blocking["stats"]["counts"], blocking["stats"]["total"]) == (stats["counts"], 3)
    assert stats["counts"]["completed"] == 2 and stats["counts"]["failed"] == 1
    assert set(stats["stages"]) == {"extract", "load"}
    types = ["RunSubmitted", "StageStarted", "StageCompleted", "StageStarted", "StageCompleted"]
    assert [e["type"] for e in events["events"]] == types[:3]
    assert [e["type"] for e in rest["events"]] == [*types[3:], "RunCompleted"]
    assert rest["next_from_version"] is None
    assert [e["type"] for e in newest["events"]] == ["RunCompleted"]
    assert (bad.value.status, bad.value.code) == (400, "INVALID_ARGUMENT")


async def test_the_client_undoes_cancels_and_retries_runs(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    done = await submit(client, wait=20)
    assert done.json()["status"] == "completed", done.text
    run_id = done.json()["id"]
    transport = LostAnswers("drop")
    async with (
        served(app) as url,
        AsyncStageline(url, workspace) as stageline,
        AsyncStageline(url, workspace, transport=transport, backoff=0.01) as losing,
    ):
        with pytest.raises(ApiError) as completed:  # only a running run can be cancelled
            await stageline.cancel(run_id, reason="too late")
        with pytest.raises(ApiError) as not_failed:
            await stageline.retry(run_id)
        undone = await stageline.undo(run_id)
        again = await stageline.undo(run_id)
        view = await stageline.run(run_id, min_position=undone["position"])
        # a retry whose answer was lost is not sent again: it would answer 409
        with pytest.raises(Unreachable):
            await losing.retry(run_id)
        running = (await submit_flaky(client, fail_times=0, sleep_seconds=1.0)).json()
        cancelled = await stageline.cancel(running["run_id"], reason="not needed")
        repeated = await stageline.cancel(running["run_id"], reason="not needed")

    assert (completed.value.status, not_failed.value.status) == (409, 409)
    assert "failed" in not_failed.value.message
    assert undone["changed"] is True and again["changed"] is False
    assert view["status"] == "compensated"
    assert len(transport.sent) == 1
    assert cancelled["changed"] is True and repeated["changed"] is False
    events = (await client.get(f"/v1/runs/{running['run_id']}/events")).json()["events"]
    assert events[-1]["type"] == "RunCancelled"
    assert events[-1]["data"]["reason"] == "not needed"
