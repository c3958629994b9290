"""The dead-letter fold, without any I/O."""

from __future__ import annotations

import base64
from datetime import timedelta

from projection_helpers import T0, Clock, as_recorded, lifecycle, of_run, poison
from reference_view import apply, empty

from stageline.actors.events import DeadLetterDiscarded, DeadLettered, RunFailed
from stageline.events import new_event
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.run_status import fold


def test_a_run_that_gives_up_opens_a_dead_letter_counting_its_attempts() -> None:
    life = lifecycle("r1", "dead", Clock())
    events = of_run(life, first_position=3)

    changes = fold(events)

    assert life.dead_letter is not None
    entry = changes.dead_letters[life.dead_letter]
    assert entry.created == {
        "kind": "run",
        "stream": "run-r1",
        "actor": None,
        "stage": "parse",
        "run_id": "r1",
        "error": 'ValueError: bad "doc"\nline 2',
        "created_at": int(events[-1].occurred_at.timestamp() * 1000),
        "seq": events[-1].position,
        "raw": None,
        "raw_encoding": None,
    }
    assert (entry.stage, entry.deliveries, entry.fields) == (("r1", "parse"), 2, {"status": "open"})
    assert changes.runs["r1"].fields["dead_letter"] == life.dead_letter


def test_deliveries_count_only_this_batchs_attempts_the_writer_adds_the_rest() -> None:
    life = lifecycle("r1", "dead", Clock())
    events = of_run(life)
    second_start = max(i for i, e in enumerate(events) if e.type == "StageStarted")

    assert fold(events[second_start:]).dead_letters[life.dead_letter or ""].deliveries == 1
    assert fold(events[second_start + 1 :]).dead_letters[life.dead_letter or ""].deliveries == 0
    for size in (1, 2, 5):
        view = empty()
        for start in range(0, len(events), size):
            apply(view, fold(events[start : start + size]))
        assert view["dead_letters"][life.dead_letter]["deliveries"] == 2


def test_a_run_failure_without_a_dead_letter_opens_none() -> None:
    assert fold(of_run(lifecycle("r1", "failed", Clock()))).dead_letters == {}


def test_redriving_closes_the_entry_in_the_same_batch_or_a_later_one() -> None:
    life = lifecycle("r1", "redriven", Clock())
    events = of_run(life)
    redriven = next(i for i, e in enumerate(events) if e.type == "DeadLetterRedriven")
    dead_letter = life.dead_letter or ""

    together = fold(events).dead_letters[dead_letter]
    later = fold(events[redriven:]).dead_letters[dead_letter]

    closed_at = int(events[redriven].occurred_at.timestamp() * 1000)
    assert together.created is not None
    assert together.fields == {"status": "redriven", "closed_at": closed_at, "reason": None}
    assert later.created is None
    assert later.fields == together.fields


def test_a_poison_command_is_an_entry_of_the_dead_letters_stream() -> None:
    clock = Clock()
    events = as_recorded(poison("p1", clock, run_id="r9") + poison("p2", clock, closed="discarded"))

    changes = fold(events)

    p1, p2 = changes.dead_letters["p1"], changes.dead_letters["p2"]
    assert p1.created == {
        "kind": "poison",
        "stream": "dead-letters",
        "actor": "parser",
        "stage": "1",
        "run_id": "r9",
        "error": "DecodeError: not a command",
        "created_at": int(events[0].occurred_at.timestamp() * 1000),
        "seq": 1,
        "raw": None,
        "raw_encoding": None,
    }
    assert (p1.stage, p1.deliveries, p1.fields) == (None, 5, {"status": "open"})
    assert (p2.fields["status"], p2.fields["reason"]) == ("discarded", "junk")


def test_a_raw_entry_is_kept_as_text_when_it_is_utf8_else_as_base64() -> None:
    def raw_of(raw: str | None) -> tuple[object, object]:
        event = DeadLettered(
            dead_letter="p1", actor="@ingest", error="malformed JSON", deliveries=1, raw=raw
        )
        [recorded] = as_recorded([("dead-letters", new_event(event))])
        created = fold([recorded]).dead_letters["p1"].created or {}
        return created["raw"], created["raw_encoding"]

    text = '{"n": 1e400, "é": 1}'
    assert raw_of(base64.b64encode(text.encode()).decode()) == (text, "utf-8")
    assert raw_of(base64.b64encode(b"\xc1 not msgpack").decode()) == (
        "wSBub3QgbXNncGFjaw==",
        "base64",
    )
    assert raw_of("not base64!") == ("not base64!", "base64")
    assert raw_of(None) == (None, None)


def test_a_dead_lettered_event_on_another_stream_opens_no_entry() -> None:
    # only the dead-letters stream's entries can be redriven or discarded: list no others
    [(_, event)] = poison("p1", Clock())
    events = as_recorded([("run-r1", event), ("elsewhere", event)])

    assert fold(events).dead_letters == {}


def test_a_run_dead_letter_is_discarded_on_the_run_stream() -> None:
    life = lifecycle("r1", "dead", Clock())
    events = of_run(life)
    discard_at = T0 + timedelta(minutes=1)
    discard = DeadLetterDiscarded(dead_letter=life.dead_letter or "", reason="known bad input")
    closed_at = int(discard_at.timestamp() * 1000)
    later = as_recorded(
        [(life.stream, new_event(discard, occurred_at=discard_at))], first_position=len(events) + 1
    )

    view = empty()
    apply(view, fold(events))
    apply(view, fold(later))

    entry = view["dead_letters"][life.dead_letter]
    assert (entry["status"], entry["closed_at"], entry["reason"], entry["kind"]) == (
        "discarded",
        closed_at,
        "known bad input",
        "run",
    )


def test_a_repeated_failure_event_opens_the_entry_once() -> None:
    life = lifecycle("r1", "dead", Clock())
    events = of_run(life)
    again = RunFailed(stage="embed", error_type="E", error="x", dead_letter=life.dead_letter)
    events += as_recorded([(life.stream, new_event(again))], first_position=len(events) + 1)

    entry = fold(events).dead_letters[life.dead_letter or ""]

    assert entry.created is not None
    assert (entry.created["stage"], entry.deliveries) == ("parse", 2)


def test_changes_only_carry_the_declared_fields() -> None:
    clock = Clock()
    events = of_run(lifecycle("r1", "redriven", clock))
    events += as_recorded(poison("p1", clock, closed="redriven"), first_position=len(events) + 1)
    for entry in fold(events).dead_letters.values():
        assert set(entry.created or {}) == set(DEAD_LETTER_CREATED)
        assert set(entry.fields) <= set(DEAD_LETTER_FIELDS)
