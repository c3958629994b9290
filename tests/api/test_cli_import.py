"""``stageline import``: a log ``stageline tail`` exported from a real stack, imported into a
workspace of the same server, exports again as it was; its runs are projected."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from api_helpers import head, submit, submit_flaky, until_status
from click.testing import Result
from fastapi import FastAPI
from test_cli_debug import TEXTS, export
from typer.testing import CliRunner

from stageline.actors.events import RunSubmitted, StageStarted
from stageline.actors.pipeline import FLAKY
from stageline.cli import app as cli_app
from stageline.events import NO_STREAM, NewEvent, keys, new_event
from stageline.events.store import AppendRequest
from stageline.stack import Stack


async def import_cli(redis_url: str, *argv: str) -> Result:
    env = {"STAGELINE_REDIS_URL": redis_url, "COLUMNS": "1000"}  # an error on one line
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["import", *argv], env=env)


async def runs_in(client: httpx.AsyncClient) -> list[str]:
    """The ids of the workspace's runs (both stages, a flaky one with a retry), all done."""
    ids = []
    for i, text in enumerate(TEXTS[:2]):
        r = await submit(client, text, wait=10, id=f"item-{i}")
        assert r.json()["status"] == "completed", r.text
        ids.append(r.json()["id"])
    flaky = (await submit_flaky(client, wait=20)).json()  # fails once: a retry_at in the log
    assert (flaky["status"], flaky["stages"][1]["attempts"]) == ("completed", 2), flaky
    return [*ids, flaky["id"]]


def moved(text: str, source: str, target: str) -> str:
    """An exported log as it reads once imported into ``target``."""
    return text.replace(f'"workspace": "{source}"', f'"workspace": "{target}"')


async def test_an_imported_log_exports_as_it_was_and_its_runs_are_projected(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, redis_url: str, tmp_path: Path
) -> None:
    run_ids = await runs_in(client)
    log = tmp_path / "log.jsonl"
    events = await export(app, workspace, log)
    target = f"{workspace}-imported"

    result = await import_cli(redis_url, str(log), "-w", target)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"imported {len(events)} events into {target} (0 already there), "
        f"{len({e['stream'] for e in events})} streams; positions as in the log"
    )
    again = tmp_path / "again.jsonl"
    await export(app, target, again)
    assert again.read_text() == moved(log.read_text(), workspace, target)

    # the projector found the new workspace: its view shows the runs as the source's does
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"X-Workspace": target},
    ) as imported:
        position = await head(imported)
        for run_id in run_ids:
            source_run = (await client.get(f"/v1/runs/{run_id}")).json()
            run = await until_status(imported, run_id, "completed", min_position=position)
            assert [(s["name"], s["status"], s["attempts"]) for s in run["stages"]] == [
                (s["name"], s["status"], s["attempts"]) for s in source_run["stages"]
            ]
        # and its runs are runs like any: one with a retry behind it can be undone
        undone = await imported.post(f"/v1/runs/{run_ids[-1]}/undo")
        assert undone.status_code == 200, undone.text

    # importing again writes nothing (the undo's events are the workspace's own, after)
    result = await import_cli(redis_url, str(log), "-w", target)
    assert result.exit_code == 0, result.output
    assert f"imported 0 events into {target} ({len(events)} already there)" in result.output
    after = tmp_path / "after.jsonl"
    await export(app, target, after)
    assert after.read_text().startswith(again.read_text())


async def test_a_workspace_that_lost_its_log_gets_it_back_byte_for_byte(
    app: FastAPI, client: httpx.AsyncClient, stack: Stack, workspace: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    await runs_in(client)
    log = tmp_path / "log.jsonl"
    await export(app, workspace, log)
    # as on a server that lost it: the log and every stream of the workspace gone
    redis = stack.store.client
    doomed = [keys.log_key(workspace)]
    doomed += [k async for k in redis.scan_iter(match=keys.stream_key(workspace, "*"))]
    assert len(doomed) > 3
    await redis.delete(*doomed)
    assert await stack.store.head(workspace) == 0

    result = await import_cli(redis_url, str(log))  # into the workspace the log names

    assert result.exit_code == 0, result.output
    assert f"into {workspace} (0 already there)" in result.output
    assert "positions as in the log" in result.output
    again = tmp_path / "again.jsonl"
    await export(app, workspace, again)
    assert again.read_bytes() == log.read_bytes()


async def test_a_workspace_whose_stream_holds_other_events_is_refused_naming_it(
    app: FastAPI, client: httpx.AsyncClient, stack: Stack, workspace: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    run_ids = await runs_in(client)
    log = tmp_path / "log.jsonl"
    await export(app, workspace, log)
    target = f"{workspace}-taken"
    # the first run's stream holds another event there; the streams before it do not exist
    stream = keys.run_stream(run_ids[0])
    await stack.store.append(target, stream, [NewEvent(type="Other", data={})])

    result = await import_cli(redis_url, str(log), "-w", target)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: stream '{stream}' of workspace '{target}' holds other events")
    assert "at version 0" in line and "nothing was imported" in line
    assert await stack.store.head(target) == 1


async def test_a_log_with_a_bad_line_is_refused_naming_it(
    app: FastAPI, client: httpx.AsyncClient, stack: Stack, workspace: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    await runs_in(client)
    log = tmp_path / "log.jsonl"
    lines = await export(app, workspace, log)
    target = f"{workspace}-bad"
    for broken, error in [
        ('{"event_id": ', "line 4: not an event"),
        (json.dumps({**lines[3], "version": lines[3]["version"] + 1}), "line 4: version"),
    ]:
        text = [json.dumps(e) for e in lines]
        text[3] = broken
        log.write_text("\n".join(text) + "\n")

        result = await import_cli(redis_url, str(log), "-w", target)

        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {log}, {error}"), line
        assert await stack.store.head(target) == 0  # not even the lines before it


async def test_a_log_with_no_events_imports_nothing(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "empty.jsonl"
    log.write_text("\n")
    result = await import_cli(redis_url, str(log))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"nothing to import: {log} holds no events"


async def in_flight(stack: Stack, workspace: str) -> str:
    """A run of ``flaky`` as a log exported while its first stage ran holds it: submitted and
    started an hour ago, no result."""
    run_id = str(uuid.uuid4())
    submitted = RunSubmitted(
        pipeline="flaky", pipeline_version=1, stages=FLAKY.stage_names, input={"text": "charge"}
    )
    started = StageStarted(stage="normalize", index=0)
    events = [new_event(submitted), new_event(started)]
    then = datetime.now(UTC) - timedelta(hours=1)
    stream = keys.run_stream(run_id)
    [result] = await stack.store.append_batch(
        [AppendRequest(workspace, stream, events, NO_STREAM, recorded_at=then)]
    )
    assert not isinstance(result, Exception), result
    return run_id


@asynccontextmanager
async def connect(app: FastAPI, workspace: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"X-Workspace": workspace},
    ) as client:
        yield client


async def nudged(stack: Stack, client: httpx.AsyncClient, run_id: str) -> int:
    """How many runs the reconciler nudges in the client's workspace, once the view shows
    ``run_id`` unfinished, with every unfinished run idle long enough."""
    await until_status(client, run_id, "processing", min_position=await head(client))
    workspace = client.headers["X-Workspace"]
    return await stack.reconciler().pass_once(workspace, now=time.time() + 3600)


async def test_an_imported_run_left_unfinished_is_not_driven_again_unless_resumed(
    app: FastAPI, client: httpx.AsyncClient, stack: Stack, workspace: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    run_id = await in_flight(stack, workspace)
    log = tmp_path / "log.jsonl"
    await export(app, workspace, log)
    target = f"{workspace}-copy"

    result = await import_cli(redis_url, str(log), "-w", target)

    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "left the log's 1 unfinished run undriven: no stage of theirs runs again here "
        "(cancel or undo one to end it); import again with --resume to drive them"
    )
    async with connect(app, target) as copy:
        assert await nudged(stack, copy, run_id) == 0  # its stage ran where it came from
        # a run submitted after the import is driven as any
        later = await in_flight(stack, target)
        assert await nudged(stack, copy, later) == 1
        # the user may end the imported one
        cancelled = await copy.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text

    # moving a workspace: its runs go on here (importing again lets go of the hold)
    for into, imported in [(f"{workspace}-moved", 2), (target, 0)]:
        result = await import_cli(redis_url, str(log), "-w", into, "--resume")
        assert result.exit_code == 0, result.output
        assert f"imported {imported} events into {into}" in result.stdout
        assert result.stderr.strip().splitlines()[-1] == (
            "resumed the log's 1 unfinished run: they are driven on here"
        )
    async with connect(app, f"{workspace}-moved") as moved_client:
        assert await nudged(stack, moved_client, run_id) == 1
        await until_status(moved_client, run_id, "completed", min_position=0)


async def test_importing_into_the_reserved_workspace_says_it_is_reserved(
    app: FastAPI, stack: Stack, workspace: str, redis_url: str, tmp_path: Path
) -> None:
    await in_flight(stack, workspace)
    log = tmp_path / "log.jsonl"
    await export(app, workspace, log)
    result = await import_cli(redis_url, str(log), "-w", keys.GLOBAL_WORKSPACE)
    assert result.exit_code == 1, result.output
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: workspace '_global' is reserved")
    )
