"""``/v1/pipelines``: named configs per workspace, as events, and runs that use them."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_helpers import (
    assert_error,
    fields,
    head,
    nested,
    run_events,
    served,
    until_event,
    until_status,
)
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.actors.pipeline import PipelineCatalog
from stageline.api.limits import MAX_JSON_DEPTH
from stageline.cli import app as cli_app
from stageline.stack import Stack

RETRYING: dict[str, Any] = {
    "name": "retrying",
    "description": "normalize, a flaky stage retried three times, summarize",
    "stages": [
        {"name": "normalize", "actor": "normalize"},
        {
            "name": "flaky",
            "actor": "flaky",
            "timeout_seconds": 5,
            "retry": {"max_retries": 3, "backoff_seconds": 0.05, "backoff_multiplier": 1.5},
        },
        {"name": "summarize", "actor": "summarize", "params": {"max_words": 8}},
    ],
}


def variant(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(RETRYING)
    body.update(changes)
    return body


def client_of(app: FastAPI, workspace: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    headers = {"X-Workspace": workspace}
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


async def create(client: httpx.AsyncClient, body: dict[str, Any] = RETRYING) -> dict[str, Any]:
    r = await client.post("/v1/pipelines", json=body)
    assert r.status_code == 201, r.text
    written: dict[str, Any] = r.json()
    return written


async def listed(client: httpx.AsyncClient, min_position: int) -> dict[str, dict[str, Any]]:
    r = await client.get("/v1/pipelines", params={"min_position": min_position})
    assert r.status_code == 200, r.text
    return {p["name"]: p for p in r.json()["pipelines"]}


async def test_create_get_list_update_delete(client: httpx.AsyncClient, stack: Stack) -> None:
    written = await create(client)
    assert set(written) == {"name", "version", "position", "changed"}
    assert (written["name"], written["version"], written["changed"]) == ("retrying", 1, True)

    r = await client.get("/v1/pipelines/retrying")
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"1"'
    got = r.json()
    assert (got["name"], got["version"], got["latest_version"]) == ("retrying", 1, 1)
    assert (got["builtin"], got["deleted"]) == (False, False)
    assert got["description"] == RETRYING["description"]
    assert got["defined_at"] is not None
    flaky = got["stages"][1]
    assert flaky["retry"] == {
        "max_retries": 3,
        "backoff_seconds": 0.05,
        "backoff_multiplier": 1.5,
        "max_backoff_seconds": None,
        "fallback": None,
    }
    assert got["stages"][0]["timeout_seconds"] == 30.0  # defaults are filled in
    assert got["stages"][2]["params"] == {"max_words": 8}

    pipelines = await listed(client, written["position"])
    assert list(pipelines) == ["flaky", "memory-ingest", "retrying"]  # built-ins first
    assert pipelines["memory-ingest"]["builtin"] is True
    assert pipelines["retrying"] == {
        "name": "retrying",
        "version": 1,
        "description": RETRYING["description"],
        "builtin": False,
        "stages": ["normalize", "flaky", "summarize"],
        "updated_at": pipelines["retrying"]["updated_at"],
    }

    body = variant(stages=RETRYING["stages"][:1], description="just normalize")
    r = await client.put("/v1/pipelines/retrying", json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["changed"], r.headers["ETag"]) == (2, True, '"2"')
    latest = (await client.get("/v1/pipelines/retrying")).json()
    assert (latest["version"], [s["name"] for s in latest["stages"]]) == (2, ["normalize"])
    old = (await client.get("/v1/pipelines/retrying", params={"version": 1})).json()
    assert (old["version"], old["latest_version"], len(old["stages"])) == (1, 2, 3)
    assert (await listed(client, r.json()["position"]))["retrying"]["version"] == 2

    same = await client.put("/v1/pipelines/retrying", json=body)  # no name in the body: fine too
    assert (same.json()["version"], same.json()["changed"]) == (2, False)

    r = await client.delete("/v1/pipelines/retrying", params={"reason": "replaced"})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["changed"]) == (2, True)
    assert "retrying" not in await listed(client, r.json()["position"])
    assert_error(await client.get("/v1/pipelines/retrying"), 404, "NOT_FOUND")
    kept = await client.get("/v1/pipelines/retrying", params={"version": 1})
    assert kept.status_code == 200 and kept.json()["deleted"] is True
    assert_error(await client.delete("/v1/pipelines/retrying"), 404, "NOT_FOUND")
    assert_error(await client.put("/v1/pipelines/retrying", json=body), 404, "NOT_FOUND")

    again = await create(client)  # the name is free again; versions go on
    assert again["version"] == 4
    events = (await client.get("/v1/streams/pipeline-retrying/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "PipelineDefined",
        "PipelineDefined",
        "PipelineDeleted",
        "PipelineDefined",
    ]
    assert events[2]["data"]["reason"] == "replaced"


async def test_duplicate_create_is_409(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    await create(client)
    error = assert_error(await client.post("/v1/pipelines", json=RETRYING), 409, "CONFLICT")
    assert "already exists" in error["message"]
    assert await stack.store.head(workspace) == 1


@pytest.mark.parametrize("name", ["memory-ingest", "flaky"])
async def test_builtins_are_read_only(
    client: httpx.AsyncClient, stack: Stack, workspace: str, name: str
) -> None:
    latest = PipelineCatalog().get(workspace, name)
    r = await client.get(f"/v1/pipelines/{name}")
    assert r.status_code == 200 and r.json()["builtin"] is True
    assert r.json()["version"] == latest.version
    assert r.headers["ETag"] == f'"{latest.version}"'
    assert_error(await client.post("/v1/pipelines", json=variant(name=name)), 409, "CONFLICT")
    assert_error(
        await client.put(f"/v1/pipelines/{name}", json=variant(name=name)), 409, "CONFLICT"
    )
    error = assert_error(await client.delete(f"/v1/pipelines/{name}"), 409, "CONFLICT")
    assert error["details"]["builtin"] is True
    missing = {"version": latest.version + 1}
    assert_error(await client.get(f"/v1/pipelines/{name}", params=missing), 404, "NOT_FOUND")
    assert await stack.store.head(workspace) == 0


def stages_with(index: int, **changes: Any) -> list[dict[str, Any]]:
    stages = copy.deepcopy(RETRYING["stages"])
    stages[index].update(changes)
    return stages


def retry_with(index: int, **retry: Any) -> list[dict[str, Any]]:
    stages = copy.deepcopy(RETRYING["stages"])
    stages[index]["retry"] = {**stages[index].get("retry", {}), **retry}
    return stages


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown actor", variant(stages=stages_with(1, actor="teleport")), "stages[1].actor"),
    ("duplicate stage", variant(stages=stages_with(2, name="normalize")), "stages[2].name"),
    ("no stages", variant(stages=[]), "stages"),
    (
        "negative retries",
        variant(stages=retry_with(1, max_retries=-1)),
        "stages[1].retry.max_retries",
    ),
    (
        "negative backoff",
        variant(stages=retry_with(1, backoff_seconds=-1)),
        "stages[1].retry.backoff_seconds",
    ),
    (
        "multiplier below 1",
        variant(stages=retry_with(1, backoff_multiplier=0.9)),
        "stages[1].retry.backoff_multiplier",
    ),
    (
        "unknown fallback",
        variant(stages=retry_with(1, fallback="nowhere")),
        "stages[1].retry.fallback",
    ),
    (
        "earlier fallback",
        variant(stages=retry_with(1, fallback="normalize")),
        "stages[1].retry.fallback",
    ),
    (
        "zero timeout",
        variant(stages=stages_with(0, timeout_seconds=0)),
        "stages[0].timeout_seconds",
    ),
    ("upper-case name", variant(name="Retrying"), "name"),
    ("name with a space", variant(name="re trying"), "name"),
    ("long name", variant(name="x" * 65), "name"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_definitions_are_400_and_append_nothing(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    case: str,
    body: dict[str, Any],
    field: str,
) -> None:
    error = assert_error(await client.post("/v1/pipelines", json=body), 400, "INVALID_ARGUMENT")
    assert error["details"]["field"] == field
    assert await stack.store.head(workspace) == 0
    if body["name"] == "retrying":  # the same checks guard a new version
        written = await create(client)
        r = await client.put("/v1/pipelines/retrying", json=body)
        assert_error(r, 400, "INVALID_ARGUMENT")
        assert await stack.store.head(workspace) == written["position"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (variant(stages=stages_with(0, colour="red")), "stages[0].colour"),
        (variant(stages=stages_with(0, params={"a": nested(MAX_JSON_DEPTH)})), "stages[0].params"),
        (variant(stages=retry_with(1, max_retries="3")), "stages[1].retry.max_retries"),
        (variant(stages="normalize"), "stages"),
        ({"stages": RETRYING["stages"]}, "name"),
        (variant(owner="me"), "owner"),
    ],
)
async def test_malformed_bodies_are_400_and_append_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str, body: dict[str, Any], field: str
) -> None:
    error = assert_error(await client.post("/v1/pipelines", json=body), 400, "INVALID_ARGUMENT")
    assert field in fields(error)
    assert await stack.store.head(workspace) == 0


async def test_names_in_paths_and_bodies_are_checked(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    assert_error(await client.get("/v1/pipelines/Not_OK"), 400, "INVALID_ARGUMENT")
    assert_error(await client.get("/v1/pipelines/nothing-here"), 404, "NOT_FOUND")
    await create(client)
    r = await client.put("/v1/pipelines/retrying", json=variant(name="other"))
    assert assert_error(r, 400, "INVALID_ARGUMENT")["details"]["field"] == "name"
    assert await stack.store.head(workspace) == 1


async def test_if_match_guards_updates_and_deletes(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    await create(client)
    update = variant(description="v2")
    r = await client.put("/v1/pipelines/retrying", json=update, headers={"If-Match": '"2"'})
    error = assert_error(r, 409, "CONFLICT")
    assert error["details"]["actual_version"] == 1
    assert error["details"]["expected_version"] == 2
    r = await client.put("/v1/pipelines/retrying", json=update, headers={"If-Match": "v1"})
    assert_error(r, 400, "INVALID_ARGUMENT")
    r = await client.put("/v1/pipelines/retrying", json=update, headers={"If-Match": "1"})
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await client.delete("/v1/pipelines/retrying", headers={"If-Match": '"1"'})
    assert_error(r, 409, "CONFLICT")
    assert await stack.store.head(workspace) == 2
    r = await client.delete("/v1/pipelines/retrying", headers={"If-Match": "*"})
    assert r.status_code == 200, r.text


async def test_workspaces_never_see_each_others_configs(
    client: httpx.AsyncClient, app: FastAPI, workspace: str
) -> None:
    written = await create(client)
    async with client_of(app, f"{workspace}-b") as other:
        assert "retrying" not in await listed(other, 0)
        assert_error(await other.get("/v1/pipelines/retrying"), 404, "NOT_FOUND")
        assert_error(await other.delete("/v1/pipelines/retrying"), 404, "NOT_FOUND")
        run = {"pipeline": "retrying", "input": {"text": "hello"}}
        error = assert_error(await other.post("/v1/runs", json=run), 404, "NOT_FOUND")
        assert error["details"]["known"] == ["flaky", "memory-ingest"]
        mine = await create(other, variant(stages=RETRYING["stages"][:1]))
        assert mine["version"] == 1
    got = (await client.get("/v1/pipelines/retrying")).json()
    assert len(got["stages"]) == 3
    assert "retrying" in await listed(client, written["position"])
    error = assert_error(
        await client.post("/v1/runs", json={"pipeline": "nope", "input": {"text": "x"}}),
        404,
        "NOT_FOUND",
    )
    assert error["details"]["known"] == ["flaky", "memory-ingest", "retrying"]


async def test_a_run_on_a_config_retries_by_its_policy_and_completes(
    client: httpx.AsyncClient,
) -> None:
    await create(client)
    body = {"pipeline": "retrying", "input": {"text": "Met Ada", "flaky": {"fail_times": 2}}}
    r = await client.post("/v1/runs", json=body, params={"wait": 20})
    assert r.status_code == 200, r.text
    run = r.json()
    assert (run["status"], run["pipeline"], run["pipeline_version"]) == ("completed", "retrying", 1)
    stages = {s["name"]: s for s in run["stages"]}
    assert list(stages) == ["normalize", "flaky", "summarize"]
    assert stages["flaky"]["attempts"] == 3
    events = await run_events(client, run["id"])
    assert events[0]["type"] == "RunSubmitted"
    assert events[0]["data"]["pipeline_version"] == 1
    assert events[0]["data"]["stages"] == ["normalize", "flaky", "summarize"]


async def test_new_versions_are_used_by_new_runs_at_once(client: httpx.AsyncClient) -> None:
    await create(client)
    await client.put("/v1/pipelines/retrying", json=variant(stages=RETRYING["stages"][:1]))
    r = await client.post(
        "/v1/runs", json={"pipeline": "retrying", "input": {"text": "x"}}, params={"wait": 20}
    )
    assert r.status_code == 200, r.text
    assert r.json()["pipeline_version"] == 2
    assert [s["name"] for s in r.json()["stages"]] == ["normalize"]


async def test_deleting_a_config_mid_run_does_not_break_the_run(
    client: httpx.AsyncClient,
) -> None:
    slow = variant(stages=retry_with(1, backoff_seconds=0.5))
    await create(client, slow)
    body = {"pipeline": "retrying", "input": {"text": "Met Ada", "flaky": {"fail_times": 1}}}
    accepted = (await client.post("/v1/runs", json=body)).json()
    run_id = accepted["run_id"]
    # the flaky stage failed once and waits for its retry: change, then delete the config
    await until_event(client, run_id, {"type": "StageFailed", "stage": "flaky", "will_retry": True})
    r = await client.put("/v1/pipelines/retrying", json=variant(stages=RETRYING["stages"][:1]))
    assert r.json()["version"] == 2
    assert (await client.delete("/v1/pipelines/retrying")).status_code == 200
    run = await until_status(client, run_id, "completed", min_position=accepted["position"])
    assert run["pipeline_version"] == 1
    assert [s["name"] for s in run["stages"]] == ["normalize", "flaky", "summarize"]
    assert all(s["status"] == "completed" for s in run["stages"])
    r = await client.post("/v1/runs", json=body)
    assert "retrying" in assert_error(r, 404, "NOT_FOUND")["message"]
    # undo still finds the version the run used
    undo = await client.post(f"/v1/runs/{run_id}/undo")
    assert undo.status_code == 200, undo.text
    assert undo.json()["status"] == "compensated"
    assert await head(client) >= undo.json()["position"]


# -- the CLI, over HTTP against this package's stack ---------------------------------


async def test_the_cli_applies_lists_shows_and_deletes(
    app: FastAPI, stack: Stack, workspace: str, tmp_path: Path
) -> None:
    async with served(app) as url:

        async def cli(*args: str) -> Result:
            argv = [*args, "--url", url, "-w", workspace]
            runner = CliRunner()
            return await asyncio.to_thread(runner.invoke, cli_app, argv, env={"COLUMNS": "300"})

        as_yaml = tmp_path / "retrying.yaml"
        as_yaml.write_text(yaml.safe_dump(RETRYING))
        r = await cli("pipelines", "apply", str(as_yaml))
        assert r.exit_code == 0, r.output
        assert '"action": "created"' in r.output and '"version": 1' in r.output
        r = await cli("pipelines", "apply", str(as_yaml))
        assert r.exit_code == 0 and '"action": "unchanged"' in r.output, r.output
        as_json = tmp_path / "retrying.json"
        as_json.write_text(json.dumps(variant(description="second")))
        r = await cli("pipelines", "apply", str(as_json))
        assert r.exit_code == 0, r.output
        assert '"action": "updated"' in r.output and '"version": 2' in r.output

        head = await stack.store.head(workspace)
        assert await stack.views.wait_for(workspace, head, 5, projection="pipelines")
        r = await cli("pipelines", "list")
        assert r.exit_code == 0, r.output
        row = next(line for line in r.output.splitlines() if "retrying" in line)
        assert "normalize, flaky, summarize" in row and "second" in row
        assert "memory-ingest" in r.output

        r = await cli("pipelines", "show", "retrying", "--version", "1")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["description"] == RETRYING["description"]

        r = await cli("pipelines", "delete", "retrying", "--if-version", "1")
        assert r.exit_code == 1 and "409 CONFLICT" in r.stderr, r.output
        r = await cli("pipelines", "delete", "retrying", "--reason", "done")
        assert r.exit_code == 0 and '"version": 2' in r.output, r.output
        r = await cli("pipelines", "show", "retrying")
        assert r.exit_code == 1 and "404 NOT_FOUND" in r.stderr, r.output

        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(variant(name="broken", stages=[])))
        r = await cli("pipelines", "apply", str(bad))
        assert r.exit_code == 1 and "400 INVALID_ARGUMENT" in r.stderr, r.output
        nameless = tmp_path / "nameless.yaml"
        nameless.write_text("stages: []\n")
        r = await cli("pipelines", "apply", str(nameless))
        assert r.exit_code == 2 and "name" in r.stderr, r.output


@pytest.mark.parametrize(
    ("yaml_text", "says"),
    [
        ("description: 2024-05-01\n", "description"),
        (
            "stages:\n- name: a\n  actor: normalize\n  params: {at: 2024-05-01 10:00:00}\n",
            "stages[0].params.at",
        ),
        ("description: !!binary aGk=\n", "description"),
        ("description: .nan\n", "description"),
        ("stages: [{name: a, actor: normalize, params: {2024-05-01: x}}]\n", "stages[0].params"),
    ],
)
async def test_the_cli_refuses_yaml_values_json_cannot_hold(
    app: FastAPI, stack: Stack, workspace: str, tmp_path: Path, yaml_text: str, says: str
) -> None:
    definition = tmp_path / "dated.yaml"
    definition.write_text("name: dated\n" + yaml_text)
    async with served(app) as url:
        argv = ["pipelines", "apply", str(definition), "--url", url, "-w", workspace]
        r = await asyncio.to_thread(CliRunner().invoke, cli_app, argv, env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    [line] = r.output.splitlines()
    assert f"{definition}: {says} " in line and "quote it" in line, line
    assert await stack.store.head(workspace) == 0
