"""Stored rows as the API shows them: the one shape the FalkorDB reads and `replay` share."""

from __future__ import annotations

from stageline.projections.rows import RUN_KEYS, STAGE_KEYS, iso, run_with_stages


def test_a_stored_run_shows_times_as_text_metadata_as_an_object_and_every_key() -> None:
    run = {"id": "r", "status": "retrying", "submitted_at": 1795422716290, "seq": 3}
    stages = [
        {"name": "b", "attempts": 0, "status": "pending", "index": 1},
        {"name": "a", "attempts": 2, "status": "retrying", "index": 0,
         "started_at": 1795422716291, "metadata": '{"n":1}', "retry_at": 1795422717000},
    ]  # fmt: skip
    shown = run_with_stages(run, stages)
    assert list(shown) == [*RUN_KEYS, "stages"]
    assert shown["submitted_at"] == "2026-11-23T08:31:56.290Z"
    assert shown["error"] is None and shown["completed_at"] is None
    a, b = shown["stages"]
    assert list(a) == list(STAGE_KEYS) and (a["name"], b["name"]) == ("a", "b")
    assert (a["metadata"], a["retry_at"]) == ({"n": 1}, "2026-11-23T08:31:57.000Z")
    assert b["started_at"] is None and b["metadata"] is None


def test_a_time_is_shown_to_the_millisecond_in_utc() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(-1) == "1969-12-31T23:59:59.999Z"
    assert iso(1795422716290) == "2026-11-23T08:31:56.290Z"
    assert iso(253402300799999) == "9999-12-31T23:59:59.999Z"  # the last one RFC 3339 can write


def test_times_in_one_second_share_its_text_but_not_their_milliseconds() -> None:
    assert [iso(1795422716000 + ms) for ms in (0, 7, 999, 1000)] == [
        "2026-11-23T08:31:56.000Z",
        "2026-11-23T08:31:56.007Z",
        "2026-11-23T08:31:56.999Z",
        "2026-11-23T08:31:57.000Z",
    ]
