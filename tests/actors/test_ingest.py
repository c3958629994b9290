"""The ingest channel's pure parse: entry bytes into an append request, or why not."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from stageline.actors.ingest import ingest_event_id, message_workspace, parse
from stageline.events.envelope import ANY, NO_STREAM

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def entry(message: Any, entry_id: bytes = b"1-0") -> Any:
    data = json.dumps(message).encode()
    return parse(entry_id, {b"__data__": data}, default_workspace="dflt", now=NOW)


def test_events_get_ids_derived_from_the_entry_id_the_same_on_every_delivery() -> None:
    given = uuid.uuid4()
    message = {
        "stream": "s",
        "events": [{"type": "A", "data": {}}, {"type": "B", "data": {}, "event_id": str(given)}],
    }
    first, again, other = entry(message), entry(message), entry(message, b"2-0")
    assert first.request is not None and again.request is not None and other.request is not None
    ids = [e.event_id for e in first.request.events]
    assert ids == [ingest_event_id("dflt", "s", b"1-0", 0), given]
    assert ids == [e.event_id for e in again.request.events]
    assert other.request.events[0].event_id != ids[0]


def test_defaults_as_over_http() -> None:
    parsed = entry({"stream": "s", "events": [{"type": "A", "data": {"x": 1}}]})
    assert parsed.request is not None
    assert (parsed.workspace, parsed.request.expected_version) == ("dflt", ANY)
    [event] = parsed.request.events
    assert (event.occurred_at, event.correlation_id, event.data) == (NOW, "1-0", {"x": 1})
    named = entry({"workspace": "w", "stream": "s", "expected_version": "no_stream",
                   "events": [{"type": "A", "data": {}}]})  # fmt: skip
    assert named.request is not None
    assert (named.request.workspace, named.request.expected_version) == ("w", NO_STREAM)


def test_an_entry_without_data_field_is_kept_whole_with_the_reason() -> None:
    parsed = parse(b"1-0", {b"body": b"{}"}, default_workspace="dflt", now=NOW)
    assert parsed.request is None and "no __data__ field" in parsed.error
    assert json.loads(parsed.raw) == {"body": "{}"}


def test_a_bad_workspace_name_is_dead_lettered_in_the_default_one() -> None:
    parsed = entry({"workspace": "no way", "stream": "s", "events": [{"type": "A", "data": {}}]})
    assert (parsed.request, parsed.workspace) == (None, "dflt")
    assert parsed.error.startswith("workspace must be")


def test_message_workspace() -> None:
    assert message_workspace(b'{"workspace": "w"}') == "w"
    assert message_workspace(b'{"stream": "s"}') is None
    assert message_workspace(b"[1") is None


def test_a_body_larger_than_http_takes_is_refused() -> None:
    message = {"stream": "s", "events": [{"type": "A", "data": {"pad": "x" * (1 << 20)}}]}
    parsed = entry(message)
    assert parsed.request is None
    size = len(json.dumps(message))
    assert parsed.error.startswith(f"entry is {size} bytes, over the 1048576 an append takes")
    assert entry({**message, "events": [{"type": "A", "data": {"pad": "x"}}]}).request


def test_an_entry_for_a_stream_stageline_writes_itself_is_refused_naming_the_route() -> None:
    parsed = entry({"stream": "pipeline-foo", "events": [{"type": "A", "data": {}}]})
    assert parsed.request is None
    assert parsed.error.startswith("stream 'pipeline-foo' is stageline's own")
    assert "use POST /v1/pipelines" in parsed.error
