"""``POST /v1/streams/{stream}/events`` from outside: stageline's own streams take nothing,
and a run stream takes only what keeps its run's history whole (``actors.reported``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from api_helpers import assert_error, until_status

from stageline.stack import Stack


async def append(
    client: httpx.AsyncClient,
    stream: str,
    events: list[dict[str, Any]],
    expected_version: Any = "any",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = {"expected_version": expected_version, "events": events}
    return await client.post(f"/v1/streams/{stream}/events", json=body, headers=headers or {})


def submitted(*stages: str, pipeline: str = "nightly-etl", version: int = 0) -> dict[str, Any]:
    data = {"pipeline": pipeline, "pipeline_version": version, "stages": list(stages), "input": {}}
    return {"type": "RunSubmitted", "data": data}


def stage(type: str, name: str, index: int, attempt: int = 1, **data: Any) -> dict[str, Any]:
    return {"type": type, "data": {"stage": name, "index": index, "attempt": attempt, **data}}


def started(name: str, index: int, attempt: int = 1) -> dict[str, Any]:
    return stage("StageStarted", name, index, attempt)


def completed(name: str, index: int, attempt: int = 1, **data: Any) -> dict[str, Any]:
    return stage("StageCompleted", name, index, attempt, **data)


FAILED_RUN = {"type": "RunFailed", "data": {"stage": "a", "error_type": "X", "error": "late"}}
COMPLETED_RUN = {"type": "RunCompleted", "data": {}}


@pytest.mark.parametrize(
    ("stream", "route"),
    [
        ("ontology", "POST /v1/ontology/patterns"),
        ("dead-letters", "POST /v1/dlq/{id}/redrive"),
        ("pipeline-foo", "POST /v1/pipelines"),
    ],
)
async def test_stageline_s_own_streams_take_nothing_from_outside(
    client: httpx.AsyncClient, stack: Stack, workspace: str, stream: str, route: str
) -> None:
    for key in ({}, {"Idempotency-Key": "k"}):
        r = await append(client, stream, [{"type": "Foreign", "data": {}}], headers=key)
        error = assert_error(r, 400, "INVALID_ARGUMENT")
        assert route in error["message"] and "stageline's own" in error["message"]
        assert error["details"] == {"stream": stream}
    assert await stack.store.head(workspace) == 0
    assert (await client.get(f"/v1/streams/{stream}/events")).status_code == 404  # reads: fine


async def test_a_fresh_workspace_s_ontology_is_still_seeded_after_a_refused_append(
    client: httpx.AsyncClient,
) -> None:
    assert (await append(client, "ontology", [{"type": "X", "data": {}}])).status_code == 400
    r = await client.get("/v1/ontology/export")
    assert r.status_code == 200 and len(r.json()["patterns"]) > 0, r.text


async def test_a_pipeline_config_starts_at_version_1_whatever_was_sent_to_its_stream(
    client: httpx.AsyncClient,
) -> None:
    assert (await append(client, "pipeline-foo", [{"type": "X", "data": {}}])).status_code == 400
    config = {"name": "foo", "stages": [{"name": "n", "actor": "normalize"}]}
    r = await client.post("/v1/pipelines", json=config)
    assert (r.status_code, r.json()["version"]) == (201, 1), r.text


# (events already in the run, the append, the rule it breaks)
REFUSED: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], str]] = [
    ("before RunSubmitted", [], [completed("a", 0)], "submitted-first"),
    ("second RunSubmitted", [submitted("a")], [submitted("x", "y")], "one-submit"),
    ("driven pipeline", [], [submitted("normalize", pipeline="memory-ingest", version=1)], "reported-only"),
    ("no stages", [], [submitted()], "stage-names"),
    ("stage not in the run", [submitted("a", "b")], [started("zzz", 5)], "stage-names"),
    ("mismatched index", [submitted("a", "b")], [started("a", 1)], "stage-names"),
    ("completed, never started", [submitted("a")], [completed("a", 0)], "attempts"),
    ("completed twice", [submitted("a"), started("a", 0), completed("a", 0)], [completed("a", 0)], "attempts"),
    ("another attempt's result", [submitted("a"), started("a", 0)], [completed("a", 0, 2)], "attempts"),
    ("started twice", [submitted("a"), started("a", 0)], [started("a", 0, 2)], "attempts"),
    ("skipped an attempt", [submitted("a")], [started("a", 0, 2)], "attempts"),
    ("a completed stage again", [submitted("a"), started("a", 0), completed("a", 0)], [started("a", 0, 2)], "attempts"),
    ("completed with a stage pending", [submitted("a", "b"), started("a", 0), completed("a", 0)], [COMPLETED_RUN], "stages-done"),
    ("failed with a stage running", [submitted("a"), started("a", 0)], [FAILED_RUN], "stages-done"),
    ("failed after completed", [submitted("a"), started("a", 0), completed("a", 0), COMPLETED_RUN], [FAILED_RUN], "ended"),
    ("domain event after the end", [submitted("a"), FAILED_RUN], [{"type": "RowsLoaded", "data": {}}], "ended"),
    ("stageline's own type", [submitted("a")], [{"type": "RunCancelled", "data": {}}], "own-type"),
    ("the bad one of many", [submitted("a")], [started("a", 0), completed("a", 0), completed("a", 0)], "attempts"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "before", "events", "rule"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_a_run_append_that_breaks_a_rule_is_409_naming_it_and_appends_nothing(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    case: str,
    before: list[dict[str, Any]],
    events: list[dict[str, Any]],
    rule: str,
) -> None:
    if before:
        assert (await append(client, "run-r", before)).status_code == 201
    head = await stack.store.head(workspace)

    error = assert_error(await append(client, "run-r", events), 409, "CONFLICT")

    assert error["details"]["rule"] == rule, error
    assert error["message"].startswith(f"events[{error['details']['index']}]: ")
    assert "actual_version" not in error["details"]  # not a version clash: the client says so
    assert await stack.store.head(workspace) == head


async def test_a_reported_run_goes_through_its_whole_life(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    steps = [
        [submitted("a", "b"), {"type": "RowsSeen", "data": {"rows": 3}}],
        [started("a", 0)],
        [stage("StageFailed", "a", 0, error_type="IOError", error="x", permanent=True)],
        [started("a", 0, 2), started("b", 1)],  # stages may run at once
        [completed("b", 1), completed("a", 0, 2, duration_ms=1.5)],
        [COMPLETED_RUN],
    ]
    for events in steps:
        r = await append(client, "run-life", events)
        assert r.status_code == 201, r.text
    run = await until_status(client, "life", "completed", min_position=r.json()["positions"][-1])
    assert [(s["name"], s["status"], s["attempts"]) for s in run["stages"]] == [
        ("a", "completed", 2),
        ("b", "completed", 1),
    ]


async def test_a_retried_request_is_answered_again_not_refused(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    assert (await append(client, "run-again", [submitted("a"), started("a", 0)])).status_code == 201
    key = {"Idempotency-Key": "done-a"}
    first = await append(client, "run-again", [completed("a", 0)], headers=key)
    assert first.status_code == 201, first.text

    again = await append(client, "run-again", [completed("a", 0)], headers=key)

    assert again.status_code == 201, again.text
    assert again.json() == {**first.json(), "deduplicated": True}
    assert await stack.store.head(workspace) == 3


async def test_an_expected_version_is_the_caller_s_and_clashes_first(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    assert (await append(client, "run-v", [submitted("a")], "no_stream")).status_code == 201
    # a second reporter of the run: its clash says so, whatever else is wrong with it
    clash = await append(client, "run-v", [submitted("a")], "no_stream")
    assert assert_error(clash, 409, "CONFLICT")["details"]["actual_version"] == 0
    assert (await append(client, "run-v", [started("a", 0)], 0)).status_code == 201


async def test_concurrent_results_of_one_attempt_record_one(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    assert (await append(client, "run-race", [submitted("a"), started("a", 0)])).status_code == 201

    answers = await asyncio.gather(
        *(append(client, "run-race", [completed("a", 0, output={"n": n})]) for n in range(8))
    )

    assert sorted(r.status_code for r in answers) == [201] + [409] * 7
    events = await stack.store.read_stream(workspace, "run-race")
    assert [e.type for e in events] == ["RunSubmitted", "StageStarted", "StageCompleted"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"duration_ms": -5}, "duration_ms"),
        ({"attempt": 0}, "attempt"),
        ({"index": -1}, "index"),
    ],
)
async def test_negative_durations_attempt_0_and_negative_indexes_are_400(
    client: httpx.AsyncClient, stack: Stack, workspace: str, data: dict[str, Any], field: str
) -> None:
    event = completed("a", 0)
    event["data"].update(data)
    error = assert_error(await append(client, "s", [event]), 400, "INVALID_ARGUMENT")
    assert field in error["message"]
    assert await stack.store.head(workspace) == 0
