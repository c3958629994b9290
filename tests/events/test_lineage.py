"""Lineage in an exported log: causes back to the first, effects in any stream."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from stageline.cli import app as cli_app
from stageline.events import RecordedEvent
from stageline.events.lineage import lineage
from stageline.events.logfile import read_log


def event(
    position: int,
    stream: str,
    type_: str,
    cause: str | None = None,
    data: dict[str, object] | None = None,
) -> RecordedEvent:
    line = {
        "event_id": str(uuid.uuid4()), "type": type_, "schema_version": 1, "stream": stream,
        "version": position, "position": position, "workspace": "w",
        "occurred_at": "2026-11-23T10:00:00Z", "recorded_at": "2026-11-23T10:00:00Z",
        "correlation_id": None, "causation_id": cause, "data": data or {"n": position},
    }  # fmt: skip
    [e] = read_log([json.dumps(line)])
    return e


def ids(events: list[RecordedEvent]) -> list[int]:
    return [e.position for e in events]


@pytest.fixture
def log() -> list[RecordedEvent]:
    """Two runs; run-a's proposal (3) leads to a sighting (5) in the ontology stream, which
    leads to a promotion (7); run-b (4, 6) is unrelated, but for 8, caused by 6 and 7."""
    e: list[RecordedEvent] = []
    e.append(event(1, "run-a", "RunSubmitted", cause="msg-17"))  # a publisher's message id
    e.append(event(2, "run-a", "StageStarted", cause=str(e[0].event_id)))
    e.append(event(3, "run-a", "PatternProposed", cause=str(e[1].event_id)))
    e.append(event(4, "run-b", "RunSubmitted"))
    e.append(event(5, "ontology", "PatternSighted", cause=str(e[2].event_id)))
    e.append(event(6, "run-b", "StageStarted", cause=str(e[3].event_id)))
    e.append(event(7, "ontology", "PatternPromoted", cause=str(e[4].event_id)))
    e.append(event(8, "ontology", "EntityTypeProposed", cause=str(e[6].event_id)))
    return e


def test_an_events_causes_go_back_to_the_first_and_its_effects_on_in_any_stream(
    log: list[RecordedEvent],
) -> None:
    found = lineage(log, log, str(log[4].event_id))  # the sighting
    assert ids(found.start) == [5]
    assert ids(found.causes) == [1, 2, 3]
    assert ids(found.effects) == [7, 8]
    assert found.unknown_causes == ["msg-17"]


def test_a_streams_lineage_is_what_led_to_it_and_what_it_led_to_outside_it(
    log: list[RecordedEvent],
) -> None:
    for of in ("run-a", "a"):  # a stream, or a run by its id
        found = lineage(log, log, of)
        assert (ids(found.start), ids(found.causes), ids(found.effects)) == (
            [1, 2, 3],
            [],
            [5, 7, 8],
        )
    found = lineage(log, log, "run-b")
    assert (ids(found.start), ids(found.causes), ids(found.effects)) == ([4, 6], [], [])
    assert found.unknown_causes == []


def test_nothing_found_and_a_cycle_of_causes_ends(log: list[RecordedEvent]) -> None:
    assert lineage(log, log, "no-such-thing").start == []
    # written by a publisher: x caused by y, y caused by x
    x, y = uuid.uuid4(), uuid.uuid4()
    loop = [
        msgspec.structs.replace(event(1, "s", "X", cause=str(y)), event_id=x),
        msgspec.structs.replace(event(2, "s", "Y", cause=str(x)), event_id=y),
    ]
    found = lineage(loop, loop, str(y))
    assert (ids(found.causes), ids(found.effects)) == ([1], [])


def test_the_second_reading_stops_at_the_last_event_it_shows(log: list[RecordedEvent]) -> None:
    def again() -> Iterator[RecordedEvent]:
        yield from log[:6]
        raise AssertionError("read past the last event shown")

    assert ids(lineage(log, again(), "run-b").start) == [4, 6]


def write(path: Path, events: list[RecordedEvent]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))


def invoke(*argv: str) -> tuple[int, str]:
    """The exit code and stdout, or stderr when it failed (then stdout must be empty)."""
    result = CliRunner().invoke(cli_app, list(argv), env={"COLUMNS": "300"})
    if result.exit_code:
        assert result.stdout == "", result.stdout
        return result.exit_code, result.stderr
    return result.exit_code, result.stdout


def test_the_cli_shows_a_lineage_as_lines_json_or_a_tree(
    log: list[RecordedEvent], tmp_path: Path
) -> None:
    path = tmp_path / "log.jsonl"
    write(path, log)
    sighting = str(log[4].event_id)
    code, out = invoke("lineage", str(path), sighting)  # into a pipe: tab-separated lines
    assert code == 0, out
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert header == [
        "relation", "position", "stream", "version", "type", "event_id", "causation_id",
    ]  # fmt: skip
    assert [(r[0], r[1]) for r in rows] == [
        ("cause", "1"), ("cause", "2"), ("cause", "3"), ("start", "5"), ("effect", "7"),
        ("effect", "8"),
    ]  # fmt: skip
    assert rows[3][5:] == [sighting, str(log[2].event_id)]

    code, out = invoke("lineage", str(path), "a", "--json")
    assert code == 0, out
    found = json.loads(out)
    assert [e["position"] for e in found["effects"]] == [5, 7, 8]
    assert found["unknown_causes"] == ["msg-17"]

    code, out = invoke("lineage", str(path), "nothing")
    assert code == 1 and "no event, stream or run 'nothing'" in out

    path.write_bytes(path.read_bytes() + msgspec.json.encode(log[0]) + b"\n")
    code, out = invoke("lineage", str(path), sighting)
    assert code == 2 and "line 9: position 1 after 8" in out


def test_the_tree_puts_each_event_under_its_cause(log: list[RecordedEvent]) -> None:
    from rich.console import Console

    from stageline.cli_debug import _tree

    console = Console(width=200, record=True)
    console.print(_tree(lineage(log, log, str(log[4].event_id))))
    lines = console.export_text().splitlines()
    depth = {line.split("#")[1].split()[0]: line.index("#") for line in lines if "#" in line}
    assert depth["1"] < depth["2"] < depth["3"] < depth["5"] < depth["7"] < depth["8"]
    assert "msg-17 (no event of this log)" in lines[1]


def test_a_compensation_and_a_dead_letters_closing_follow_from_what_they_name() -> None:
    """An undo's events have no cause in the log (a user asked), a redrive's neither: they
    are followed from the effects they compensate and the dead letter they close."""
    e: list[RecordedEvent] = []
    e.append(event(1, "run-a", "RunSubmitted"))
    e.append(event(2, "run-a", "StageStarted", cause=str(e[0].event_id)))
    e.append(event(3, "run-a", "Charged", cause=str(e[1].event_id)))
    charged, started = str(e[2].event_id), str(e[1].event_id)
    e.append(event(4, "run-a", "StageCompensated", data={"compensates": [charged]}))
    e.append(event(5, "run-a", "Refunded", cause=str(e[3].event_id)))
    e.append(event(6, "run-a", "EffectCompensated", data={"compensates": charged}))
    failed = event(7, "run-a", "RunFailed", cause=started, data={"dead_letter": "x"})
    e.append(msgspec.structs.replace(failed, data={"dead_letter": str(failed.event_id)}))
    e.append(event(8, "run-a", "DeadLetterRedriven", data={"dead_letter": str(failed.event_id)}))
    e.append(event(9, "run-a", "Other", data={"compensates": charged}))  # not stageline's

    found = lineage(e, e, charged)
    assert (ids(found.causes), ids(found.effects)) == ([1, 2], [4, 5, 6])
    found = lineage(e, e, str(e[4].event_id))  # the refund: back through what it reverses
    assert (ids(found.causes), ids(found.effects)) == ([1, 2, 3, 4], [])
    found = lineage(e, e, str(failed.event_id))
    assert (ids(found.causes), ids(found.effects)) == ([1, 2], [8])
