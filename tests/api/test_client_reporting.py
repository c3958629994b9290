"""``stageline.reporting``'s reports (made through ``stageline.client``) against the real app
on a real port when stageline cannot be reached for a while, and when a restarted reporter
carries on a run."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from api_helpers import served
from fastapi import FastAPI

from stageline.actors.decide import ABANDONED_ERROR as STAGES_ABANDONED_ERROR
from stageline.client import (
    ABANDONED_ERROR,
    AsyncStageline,
    CannotResume,
    RunReport,
    Stageline,
    Unreachable,
)

ETL = ["extract", "transform", "load"]


def dead_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Outage(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Sends each request on to the API, or while ``down`` to a port nothing listens on:
    stageline cannot be reached."""

    def __init__(self) -> None:
        self.down = False
        self.dead = dead_port()
        self.inner = httpx.AsyncHTTPTransport()
        self.sync = httpx.HTTPTransport()

    def _aimed(self, request: httpx.Request) -> httpx.Request:
        if self.down:
            request.url = request.url.copy_with(port=self.dead)
        return request

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(self._aimed(request))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.sync.handle_request(self._aimed(request))

    async def aclose(self) -> None:
        await self.inner.aclose()

    def close(self) -> None:
        self.sync.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stageline.client" and r.levelno == logging.WARNING
    ]


async def events_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
    return events


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str | None, int | None]]:
    """Each event's type, and its stage and attempt if it has them."""
    return [(e["type"], e["data"].get("stage"), e["data"].get("attempt")) for e in events]


def test_the_client_abandons_attempts_as_stageline_does() -> None:
    assert ABANDONED_ERROR == STAGES_ABANDONED_ERROR


async def test_an_outage_longer_than_the_retries_does_not_stop_the_users_code(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage()
    ran: list[str] = []
    async with (
        served(app) as url,
        AsyncStageline(url, workspace, transport=outage, backoff=0.01) as stageline,
    ):
        async with stageline.report("nightly-etl", ETL, {"id": "outage"}) as run:
            async with run.stage("extract"):
                ran.append("extract")
            async with run.stage("transform"):
                outage.down = True  # for longer than the client's retries
                ran.append("transform")
            async with run.stage("load"):  # it used to raise Unreachable out of transform
                ran.append("load")
                assert run.unsent == 2  # transform's end, load's start
                back = datetime.now().astimezone()
                outage.down = False
        assert run.unsent == 0
        assert run.position is not None
        view = await stageline.run(run.run_id, min_position=run.position)
        events = await events_of(client, run.run_id)
    assert ran == ETL
    assert view["status"] == "completed"
    assert [(s["status"], s["attempts"]) for s in view["stages"]] == [("completed", 1)] * 3
    assert kinds(events) == [
        ("RunSubmitted", None, None),
        ("StageStarted", "extract", 1),
        ("StageCompleted", "extract", 1),
        ("StageStarted", "transform", 1),
        ("StageCompleted", "transform", 1),
        ("StageStarted", "load", 1),
        ("StageCompleted", "load", 1),
        ("RunCompleted", None, None),
    ]
    # the held reports keep the time they happened, not the time they were sent
    held = events[4]
    assert datetime.fromisoformat(held["occurred_at"]) < back
    assert datetime.fromisoformat(held["recorded_at"]) >= back
    [warning] = warnings(caplog)
    assert "stageline cannot be reached" in warning and run.run_id in warning


def report_through_an_outage(client: Stageline, outage: Outage) -> tuple[Any, RunReport]:
    """A blocking report whose ``transform`` raises while stageline cannot be reached, until
    after the run's end: what reached the caller, and the report."""
    boom = RuntimeError("the warehouse is read-only")
    try:
        with client.report("nightly-etl", ETL) as run:
            with run.stage("extract"):
                outage.down = True
            with run.stage("transform"):
                raise boom
    except RuntimeError as exc:
        assert exc is boom
        return exc, run
    raise AssertionError("the stage's exception did not reach the caller")


async def test_reports_held_past_the_runs_end_are_sent_by_flush(
    app: FastAPI, workspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage()
    async with served(app) as url:
        with Stageline(url, workspace, transport=outage, backoff=0.01) as blocking:
            raised, run = await asyncio.to_thread(report_through_an_outage, blocking, outage)
            # the caller's own exception, unchanged: no note of stageline's trouble
            assert not getattr(raised, "__notes__", None)
            assert run.unsent == 4  # extract's end, transform's start and failure, the run's end
            first, last = warnings(caplog)
            assert "stageline cannot be reached" in first
            assert f"run {run.run_id!r}: 4 report(s) not recorded" in last
            with pytest.raises(Unreachable, match="4 report"):  # for reports that must be sent
                await asyncio.to_thread(run.flush)
            outage.down = False
            await asyncio.to_thread(run.flush)
        assert run.unsent == 0 and run.position is not None
        async with AsyncStageline(url, workspace) as stageline:
            view = await stageline.run(run.run_id, min_position=run.position)
    assert view["status"] == "failed"
    assert view["error"] == "RuntimeError: the warehouse is read-only"
    assert [s["status"] for s in view["stages"]] == ["completed", "failed", "pending"]


def crash_in_transform(url: str, workspace: str, run_id: str) -> None:
    """A blocking reporter that dies in the middle of ``transform`` (nothing more sent)."""
    client = Stageline(url, workspace)
    run = client.report("nightly-etl", ETL, {"id": "crash"}, run_id=run_id).__enter__()
    with run.stage("extract"):
        pass
    run.stage("transform").__enter__()


def carry_on(url: str, workspace: str, run_id: str) -> tuple[list[int], int | None]:
    """A blocking reporter of ``run_id`` that runs ``transform`` and ``load``: their
    attempts' numbers, and the report's position."""
    attempts = []
    with Stageline(url, workspace) as client:
        with client.report("nightly-etl", ETL, {"id": "crash"}, run_id=run_id) as run:
            for name in ("transform", "load"):
                with run.stage(name) as s:
                    attempts.append(s.attempt)
        return attempts, run.position


async def test_a_restarted_reporter_carries_on_the_run_of_one_that_crashed(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    async with served(app) as url:
        await asyncio.to_thread(crash_in_transform, url, workspace, "crashrun1")
        # it used to be 409: stream 'run-crashrun1' is at version 3, expected -1
        attempts, position = await asyncio.to_thread(carry_on, url, workspace, "crashrun1")
        async with AsyncStageline(url, workspace) as stageline:
            view = await stageline.run("crashrun1", min_position=position)
        events = await events_of(client, "crashrun1")
    assert attempts == [2, 1]
    assert view["status"] == "completed"
    assert [(s["status"], s["attempts"]) for s in view["stages"]] == [
        ("completed", 1),
        ("completed", 2),
        ("completed", 1),
    ]
    assert kinds(events) == [
        ("RunSubmitted", None, None),
        ("StageStarted", "extract", 1),
        ("StageCompleted", "extract", 1),
        ("StageStarted", "transform", 1),
        ("StageFailed", "transform", 1),
        ("StageStarted", "transform", 2),
        ("StageCompleted", "transform", 2),
        ("StageStarted", "load", 1),
        ("StageCompleted", "load", 1),
        ("RunCompleted", None, None),
    ]
    assert events[4]["data"]["error_type"] == ABANDONED_ERROR


async def test_a_reporter_restarted_while_stageline_is_down_carries_on_once_it_is_up(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    outage = Outage()
    async with served(app) as url:
        await asyncio.to_thread(crash_in_transform, url, workspace, "crashrun2")
        async with AsyncStageline(url, workspace, transport=outage, backoff=0.01) as stageline:
            outage.down = True  # a host restarted: its job comes up before stageline
            async with stageline.report("nightly-etl", ETL, run_id="crashrun2") as run:
                async with run.stage("transform") as transform:
                    pass
                async with run.stage("load") as load:
                    outage.down = False
                # known once stageline answered: transform's attempt came after the lost one
                assert (transform.attempt, load.attempt) == (2, 1)
            view = await stageline.run("crashrun2", min_position=run.position)
        events = await events_of(client, "crashrun2")
    assert view["status"] == "completed"
    assert [s["attempts"] for s in view["stages"]] == [1, 2, 1]
    assert kinds(events)[3:] == [
        ("StageStarted", "transform", 1),
        ("StageFailed", "transform", 1),
        ("StageStarted", "transform", 2),
        ("StageCompleted", "transform", 2),
        ("StageStarted", "load", 1),
        ("StageCompleted", "load", 1),
        ("RunCompleted", None, None),
    ]


async def test_a_run_that_ended_is_not_carried_on_and_says_so(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with served(app) as url, AsyncStageline(url, workspace) as stageline:
        async with stageline.report("nightly-etl", ETL, run_id="ended1") as run:
            for name in ETL:
                async with run.stage(name):
                    pass
        with pytest.raises(CannotResume, match=r"run 'ended1' has ended \(RunCompleted\)"):
            async with stageline.report("nightly-etl", ETL, run_id="ended1"):
                raise AssertionError("the block ran")
        # a run ended by someone else meanwhile: the user's code goes on, unrecorded
        ran = []
        async with stageline.report("nightly-etl", ETL, run_id="cancelled1") as run:
            with pytest.raises(CannotResume, match=r"is a run of 'nightly-etl'.*not a reported"):
                async with stageline.report("nightly-etl", ["extract"], run_id="cancelled1"):
                    pass
            cancel = await client.post("/v1/runs/cancelled1/cancel")
            assert cancel.status_code == 200, cancel.text
            for name in ETL:
                async with run.stage(name):
                    ran.append(name)
        events = await events_of(client, "cancelled1")
    assert ran == ETL
    assert [e["type"] for e in events] == ["RunSubmitted", "RunCancelled"]
    assert run.unsent == 7
    assert (
        "run 'cancelled1': 7 report(s) not recorded (run 'cancelled1' has ended"
        in (warnings(caplog)[-1])
    )


async def test_a_blocking_report_holds_while_stageline_is_down_each_report_trying_once(
    app: FastAPI, workspace: str
) -> None:
    # during an outage, each report tries the held ones once: the user's code is not
    # slowed down by the client's backoff at every stage
    outage = Outage()
    outage.down = True
    async with served(app) as url:

        def report() -> tuple[float, RunReport]:
            with Stageline(url, workspace, transport=outage, backoff=0.2) as client:
                run = client.report("nightly-etl", ETL).__enter__()  # 0.2+0.4+0.8 s
                began = time.perf_counter()
                for name in ETL:
                    with run.stage(name):
                        pass
                return time.perf_counter() - began, run

        seconds, run = await asyncio.to_thread(report)
    assert seconds < 1.0
    assert run.unsent == 7


async def test_a_report_holds_at_most_max_held_appends_and_drops_the_later_ones(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stageline.reporting.MAX_HELD", 2)
    outage = Outage()
    async with (
        served(app) as url,
        AsyncStageline(url, workspace, transport=outage, backoff=0.01) as stageline,
    ):
        async with stageline.report("nightly-etl", ETL) as run:
            outage.down = True
            for name in ETL:
                async with run.stage(name):
                    pass
            assert run.unsent == 6  # 2 held, 4 dropped
            outage.down = False
        with pytest.raises(Unreachable, match=r"5 report.*more than 2 were held"):
            await run.flush()
        events = await events_of(client, run.run_id)
    # what was held went on to stageline: a beginning of the run, consistent as far as it goes
    assert kinds(events) == [
        ("RunSubmitted", None, None),
        ("StageStarted", "extract", 1),
        ("StageCompleted", "extract", 1),
    ]
