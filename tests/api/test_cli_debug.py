"""Debugging from exported logs: `stageline tail` to a file, then `replay` and `diff` on it,
with no server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import head, served, submit, submit_flaky
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.cli import app as cli_app
from stageline.cli_debug import _rereadable
from stageline.errors import InvalidArgument
from stageline.events import RecordedEvent
from stageline.events.logfile import diff_logs, read_log

TEXTS = [
    "Met Alice in Berlin to talk about the Redis migration.",
    "Bob from Acme Labs presented the Kafka Gateway at PyCon.",
    "A note with no names at all.",
]


async def cli(*argv: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli_app, list(argv), env={"COLUMNS": "300"})


async def export(app: FastAPI, workspace: str, path: Path, *args: str) -> list[dict[str, Any]]:
    async with served(app) as url:
        result = await cli("tail", "--url", url, "-w", workspace, *args)
    assert result.exit_code == 0, result.output
    await asyncio.to_thread(path.write_text, result.stdout)
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_replay_shows_the_runs_as_the_view_did_at_any_position(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, tmp_path: Path
) -> None:
    run_ids = [(await submit(client, t, wait=10, id=f"item-{i}")).json()["id"] for i, t in
               enumerate(TEXTS)]  # fmt: skip
    log = tmp_path / "log.jsonl"
    events = await export(app, workspace, log)

    result = await cli("replay", str(log), "--json")
    assert result.exit_code == 0, result.output
    replayed = {r["id"]: r for r in json.loads(result.stdout)}
    assert list(replayed) == run_ids
    for run_id in run_ids:  # what the live view holds
        live = (await client.get(f"/v1/runs/{run_id}")).json()
        run = replayed[run_id]
        assert (run["status"], run["current_stage"]) == (live["status"], live["current_stage"])
        assert [(s["name"], s["status"], s["attempts"]) for s in run["stages"]] == [
            (s["name"], s["status"], s["attempts"]) for s in live["stages"]
        ]

    # as of the second run's submission: the first run part-way or done, the second new
    second = next(e for e in events if e["stream"] == f"run-{run_ids[1]}")
    result = await cli("replay", str(log), "--until", str(second["position"]), "--json")
    assert result.exit_code == 0, result.output
    early = json.loads(result.stdout)
    assert [r["id"] for r in early] == run_ids[:2]
    assert early[1]["status"] == "processing"
    assert {s["status"] for s in early[1]["stages"]} == {"pending"}

    result = await cli("replay", str(log), "--run", run_ids[2])
    assert result.exit_code == 0 and json.loads(result.stdout)["id"] == run_ids[2]
    result = await cli("replay", str(log), "--run", "no-such-run")
    assert result.exit_code == 1 and "no run 'no-such-run'" in result.stderr
    assert result.stdout == ""  # `replay --run x | jq` gets no error as data
    # into a pipe, 80 columns wide: tab-separated lines, every value whole
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["replay", str(log)])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == ["id", "pipeline", "status", "current_stage", "stages"]
    rows = [line.split("\t") for line in lines]
    assert [row[0] for row in rows] == run_ids
    for run_id, _, status, current, stages in rows:
        run = replayed[run_id]
        assert (status, current) == (run["status"], run["current_stage"])
        assert stages == " ".join(f"{s['name']}:{s['status']}" for s in run["stages"])


async def test_replay_shows_each_run_as_get_run_answers_it(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, tmp_path: Path
) -> None:
    ran = [
        (await submit(client, TEXTS[0], wait=10)).json(),  # stage metadata
        (await submit_flaky(client, wait=20)).json(),  # a retry
        (await submit_flaky(client, wait=20, fail_times=4)).json(),  # a failure, a dead letter
    ]
    assert [r["status"] for r in ran] == ["completed", "completed", "failed"], ran
    log = tmp_path / "log.jsonl"
    await export(app, workspace, log)
    position = await head(client)

    result = await cli("replay", str(log), "--json")
    assert result.exit_code == 0, result.output
    replayed = json.loads(result.stdout)
    live = []
    for run in ran:
        r = await client.get(f"/v1/runs/{run['id']}", params={"min_position": position})
        assert r.status_code == 200, r.text
        live.append(r.json())
    assert replayed == live  # the same keys, nulls, times as text and metadata as objects
    assert any(s["metadata"] for s in live[0]["stages"])
    assert live[1]["stages"][1]["attempts"] == 2 and live[2]["dead_letter"] is not None
    one = await cli("replay", str(log), "--run", ran[2]["id"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout) == live[2]


async def test_replay_of_a_log_exported_after_a_position_names_the_runs_it_holds_in_part(
    app: FastAPI, client: httpx.AsyncClient, workspace: str, tmp_path: Path
) -> None:
    begun = (await submit(client, TEXTS[0], wait=10)).json()
    whole = (await submit(client, TEXTS[1], wait=10)).json()
    events = await export(app, workspace, tmp_path / "log.jsonl")
    submitted = next(e for e in events if e["stream"] == f"run-{begun['id']}")
    part = tmp_path / "part.jsonl"
    # from just past the first run's RunSubmitted: the rest of it, and all of the second
    await export(app, workspace, part, "--after", str(submitted["position"]))
    live = await client.get(f"/v1/runs/{whole['id']}", params={"min_position": await head(client)})

    warning = (
        f"warning: left out 1 run that began before the first event of {part} (no "
        f"RunSubmitted in it): {begun['id']}; to replay them, export the log from an earlier "
        "position (`stageline tail` without --after)\n"
    )
    result = await cli("replay", str(part), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [live.json()]  # what it can show, as GET shows it
    assert result.stderr == warning
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["replay", str(part)])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["id", whole["id"]]
    assert result.stderr == warning
    whole_log = await cli("replay", str(tmp_path / "log.jsonl"), "--json")
    assert (whole_log.exit_code, whole_log.stderr) == (0, "")

    for name in (begun["id"], f"run-{begun['id']}"):
        result = await cli("replay", str(part), "--run", name)
        assert (result.exit_code, result.stdout) == (1, ""), result.output
        assert result.stderr.startswith(
            f"error: run {name!r} began before the first event of {part}: its first events, "
            "RunSubmitted among them, are not in it; export the log from an earlier position"
        )
    # up to before the second run: nothing to replay but the part of the first
    second = next(e for e in events if e["stream"] == f"run-{whole['id']}")
    result = await cli("replay", str(part), "--json", "--until", str(second["position"] - 1))
    assert (result.exit_code, json.loads(result.stdout)) == (1, [])
    assert result.stderr == warning


def test_replay_counts_the_runs_it_holds_in_part_and_names_a_few(tmp_path: Path) -> None:
    from stageline.projections.replay import runs_as_of

    lines = [logged(1, "run-whole", 0, "RunSubmitted", SUBMITTED)]
    lines += [logged(i + 2, f"run-p{i}", 3, "RunCompleted", {}) for i in range(5)]
    lines += [  # a stream of run- events of another kind, from its start: no run, no part
        logged(7, "run-not", 0, "Noted", {}),
        logged(8, "run-p0", 4, "RunCompleted", {}),
    ]
    replayed = runs_as_of(read_log(lines))
    assert [r["id"] for r in replayed.runs] == ["whole"]
    assert replayed.partial == [f"p{i}" for i in range(5)]

    log = tmp_path / "part.jsonl"
    log.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli_app, ["replay", str(log)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        f"warning: left out 5 runs that began before the first event of {log} (no "
        "RunSubmitted in it): p0, p1, p2 and 2 more; to replay them,"
    )


async def test_diff_pairs_runs_of_the_same_inputs_and_shows_where_they_part(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    logs = []
    for name in ("before", "after"):
        workspace = f"diff-{name}-{uuid.uuid4().hex[:6]}"
        for i, text in enumerate(TEXTS):
            r = await submit(client, text, wait=10, headers={"X-Workspace": workspace}, id=f"i{i}")
            assert r.status_code == 200, r.text
        path = tmp_path / f"{name}.jsonl"
        await export(app, workspace, path)
        logs.append(path)
    before, after = map(str, logs)

    same = await cli("diff", before, before)
    assert same.exit_code == 0 and "0 differ" in same.output, same.output
    by_name = await cli("diff", before, after)  # other run ids: no run pairs by stream name
    assert by_name.exit_code == 1 and "3 only in" in by_name.output, by_name.output
    by_input = await cli("diff", before, after, "--runs-by-input")
    assert by_input.exit_code == 0, by_input.output

    # "after" as a changed classify stage would have written it
    lines = [json.loads(line) for line in logs[1].read_text().splitlines()]
    changed = next(
        e for e in lines if e["type"] == "StageCompleted" and e["data"]["stage"] == "classify"
    )
    changed["data"]["output"] = {**changed["data"].get("output", {}), "memory_type": "other"}
    logs[1].write_text("".join(json.dumps(e) + "\n" for e in lines))
    result = await cli("diff", before, after, "--runs-by-input")
    assert result.exit_code == 1, result.output
    item = next(
        e["data"]["input"]["id"]
        for e in lines
        if e["type"] == "RunSubmitted" and e["stream"] == changed["stream"]
    )
    assert f"run of input '{item}'" in result.output
    assert f"first differs at version {changed['version']}" in result.output
    assert '"memory_type": "other"' in result.output
    as_json = json.loads((await cli("diff", before, after, "--runs-by-input", "--json")).stdout)
    [d] = as_json["differ"]
    assert (d["version"], d["b"]["type"], as_json["equal"]) == (
        changed["version"],
        "StageCompleted",
        False,
    )


async def test_diff_into_a_file_keeps_each_event_on_one_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, text in ((a, "x" * 150), (b, "y" * 150)):
        done = {"stage": "a", "index": 0, "output": {"text": text}}
        rows = [logged(1, "run-x", 0, "RunSubmitted", SUBMITTED),
                logged(2, "run-x", 1, "StageCompleted", done)]  # fmt: skip
        path.write_text("\n".join(rows) + "\n")
    # no COLUMNS: rich's 80 columns where stdout is not a terminal
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["diff", str(a), str(b)])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[1:] == [
        "run-x (run-x) first differs at version 1:",
        '- StageCompleted {"index": 0, "output": {"text": "' + "x" * 150 + '"}, "stage": "a"}',
        '+ StageCompleted {"index": 0, "output": {"text": "' + "y" * 150 + '"}, "stage": "a"}',
    ]


async def test_progress_bars_leave_nothing_on_a_stderr_that_is_not_a_terminal(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(logged(1, "run-x", 0, "RunSubmitted", SUBMITTED) + "\n")
    for argv in (["replay", "--json"], ["replay"], ["diff", str(log)], ["lineage", "run-x"]):
        argv.insert(1, str(log))
        result = await cli(*argv)
        assert result.exit_code == 0, (argv, result.output)
        assert (argv, result.stderr) == (argv, "")


async def test_a_log_line_that_is_not_an_event_is_named(tmp_path: Path) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text('\n{"not": "an event"}\n')
    result = await cli("replay", str(log))
    assert result.exit_code == 2 and result.stdout == ""
    assert "bad.jsonl, line 2: not an event" in result.stderr
    assert "Traceback" not in result.output


def test_ignored_keys_are_left_out_at_any_depth() -> None:
    def log(duration: int, text: str) -> list[Any]:
        line = {
            "event_id": str(uuid.uuid4()), "type": "StageCompleted", "schema_version": 1,
            "stream": "run-1", "version": 0, "position": 1, "workspace": "w",
            "occurred_at": "2026-11-23T00:00:00Z", "recorded_at": "2026-11-23T00:00:00Z",
            "correlation_id": None, "causation_id": None,
            "data": {"duration_ms": duration, "output": {"items": [{"duration_ms": 1, "t": text}]}},
        }  # fmt: skip
        return read_log([json.dumps(line)])

    assert diff_logs(log(5, "x"), log(9, "x")).equal
    assert not diff_logs(log(5, "x"), log(5, "y")).equal
    assert not diff_logs(log(5, "x"), log(9, "x"), ignore=()).equal


def logged(position: int, stream: str, version: int, type_: str, data: dict[str, Any]) -> str:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()), "type": type_, "schema_version": 1, "stream": stream,
            "version": version, "position": position, "workspace": "w",
            "occurred_at": "2026-11-23T10:00:00Z", "recorded_at": "2026-11-23T10:00:00Z",
            "correlation_id": None, "causation_id": None, "data": data,
        }
    )  # fmt: skip


SUBMITTED = {"pipeline": "p", "pipeline_version": 1, "stages": ["a"], "input": {"text": "t"}}


async def test_replay_refuses_a_log_out_of_log_order_naming_the_line(tmp_path: Path) -> None:
    log = tmp_path / "mixed.jsonl"
    log.write_text(
        "\n".join(
            [
                logged(2, "run-x", 0, "RunSubmitted", SUBMITTED),
                logged(1, "run-y", 0, "RunSubmitted", SUBMITTED),
            ]
        )
    )
    result = await cli("replay", str(log))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "mixed.jsonl, line 2: position 1 after 2" in result.stderr
    assert "Traceback" not in result.output


async def test_replay_refuses_an_event_of_a_newer_schema_naming_the_line(tmp_path: Path) -> None:
    log = tmp_path / "newer.jsonl"
    newer = json.loads(logged(2, "run-x", 1, "RunCompleted", {}))
    log.write_text(
        logged(1, "run-x", 0, "RunSubmitted", SUBMITTED)
        + "\n"
        + json.dumps({**newer, "schema_version": 99})
        + "\n"
    )
    result = await cli("replay", str(log))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {log}, line 2: RunCompleted schema_version 99 is newer than this stageline's 1"
    )


async def test_replay_until_a_position_reads_no_further(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    # past --until the file is not even an event: replay must stop before reading it
    log.write_text(logged(1, "run-x", 0, "RunSubmitted", SUBMITTED) + "\nnot json\n")
    result = await cli("replay", str(log), "--until", "1", "--json")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.stdout)] == ["x"]
    assert (await cli("replay", str(log))).exit_code == 2


async def test_replay_options_are_checked_and_a_run_is_found_by_its_stream_too(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(logged(1, "run-x", 0, "RunSubmitted", SUBMITTED) + "\n")
    result = await cli("replay", str(log), "--until", "-1")
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr == "error: --until -1: a log position is 0 or more\n"

    for name in ("x", "run-x"):  # its id, or its stream's name, as lineage takes it
        result = await cli("replay", str(log), "--run", name)
        assert result.exit_code == 0 and json.loads(result.stdout)["id"] == "x", result.output
    result = await cli("replay", str(log), "--run", "y")
    assert result.exit_code == 1 and result.stderr == f"error: no run 'y' in {log}\n"
    result = await cli("replay", str(log), "--run", "y", "--until", "1")
    assert result.stderr == f"error: no run 'y' in {log} up to position 1\n"

    result = await cli("diff", str(log), str(log))
    assert result.stdout.startswith("1 stream the same, 0 differ,"), result.output


async def test_diff_ignore_adds_to_the_keys_left_out_by_default(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, n in ((a, 1), (b, 2)):
        done = {"stage": "a", "duration_ms": n, "output": {"succeed_at": n}}
        rows = [logged(1, "run-x", 0, "RunSubmitted", SUBMITTED),
                logged(2, "run-x", 1, "StageCompleted", done)]  # fmt: skip
        path.write_text("\n".join(rows) + "\n")
    assert (await cli("diff", str(a), str(b))).exit_code == 1  # succeed_at differs
    result = await cli("diff", str(a), str(b), "--ignore", "succeed_at")
    assert result.exit_code == 0, result.output  # and duration_ms is still left out
    both = await cli("diff", str(a), str(b), "--ignore", "succeed_at", "--no-default-ignores")
    assert both.exit_code == 1 and '"duration_ms": 2' in both.stdout, both.output
    result = await cli("diff", str(a), str(b), "--no-default-ignores", "--ignore", "succeed_at",
                       "--ignore", "duration_ms")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_streams_pair_and_compare_as_in_version_order_whatever_the_log_order() -> None:
    def log(*rows: tuple[int, str, int, str, dict[str, Any]]) -> list[RecordedEvent]:
        return read_log([logged(*row) for row in rows])

    first = {**SUBMITTED, "input": {"id": "i1"}}
    a = log(
        (1, "run-x", 1, "StageStarted", {"n": 1}),
        (2, "run-x", 0, "RunSubmitted", first),  # its first event, all the same
        (3, "run-x", 3, "StageCompleted", {"n": 2.0}),  # a gap, and 2.0 for 2
    )
    b = log(
        (1, "run-y", 0, "RunSubmitted", first),
        (2, "run-y", 1, "StageStarted", {"n": True}),  # True for 1
        (3, "run-y", 2, "StageCompleted", {"n": 2}),
        (4, "run-y", 3, "StageCompleted", {"n": 3}),
    )
    assert diff_logs(a, a[::-1], runs_by_input=True).equal
    result = diff_logs(a, b, runs_by_input=True)
    assert (result.same, result.only_a, result.only_b) == (0, [], [])
    [d] = result.differ
    assert (d.key, d.streams, d.version) == ("run of input 'i1'", ("run-x", "run-y"), 3)
    assert (d.a, d.b) == (None, {"type": "StageCompleted", "data": {"n": 3}})


def test_a_log_that_changed_between_its_two_readings_is_refused(tmp_path: Path) -> None:
    rows = [logged(1, "s", 0, "A", {"n": 1}), logged(2, "s", 1, "A", {"n": 2})]
    readings = iter([read_log(rows), read_log(rows[:1])])
    with pytest.raises(InvalidArgument, match=r"'s' has no event 1 .* changed while it was read"):
        diff_logs(lambda: next(readings), read_log(rows[:1]))

    path = tmp_path / "log.jsonl"
    path.write_text(rows[0] + "\n")
    events = _rereadable(path)
    assert len(list(events())) == 1
    path.write_text(rows[0] + "\n" + rows[1] + "\n")
    with pytest.raises(InvalidArgument, match=r"log\.jsonl changed while it was read"):
        list(events())


def test_runs_of_the_same_input_pair_in_the_order_they_were_submitted() -> None:
    same = {**SUBMITTED, "input": {"id": "item-1"}}

    def log(prefix: str, second: str) -> list[RecordedEvent]:
        return read_log(
            [
                logged(1, f"run-{prefix}1", 0, "RunSubmitted", same),
                logged(2, f"run-{prefix}2", 0, "RunSubmitted", same),
                logged(3, f"run-{prefix}1", 1, "RunCompleted", {"n": "first"}),
                logged(4, f"run-{prefix}2", 1, "RunCompleted", {"n": second}),
            ]
        )

    assert diff_logs(log("a", "second"), log("b", "second"), runs_by_input=True).equal
    result = diff_logs(log("a", "second"), log("b", "other"), runs_by_input=True)
    assert (result.same, result.only_a, result.only_b) == (1, [], [])
    [d] = result.differ
    assert (d.key, d.streams, d.version) == ("run of input 'item-1' #2", ("run-a2", "run-b2"), 1)


def test_replay_shows_a_cancelled_runs_stage_that_waited_for_a_retry_as_the_view_does() -> None:
    from stageline.projections.replay import runs_as_of

    failed = {"stage": "a", "index": 0, "attempt": 1, "error_type": "E", "error": "boom",
              "will_retry": True, "retry_at": "2026-11-23T10:05:00Z"}  # fmt: skip
    events = read_log(
        [
            logged(1, "run-x", 0, "RunSubmitted", SUBMITTED),
            logged(2, "run-x", 1, "StageStarted", {"stage": "a", "index": 0, "attempt": 1}),
            logged(3, "run-x", 2, "StageFailed", failed),
            logged(4, "run-x", 3, "RunCancelled", {"reason": "no"}),
        ]
    )
    [run] = runs_as_of(events).runs
    [stage] = run["stages"]
    assert (run["status"], stage["status"], stage.get("retry_at")) == ("cancelled", "pending", None)
