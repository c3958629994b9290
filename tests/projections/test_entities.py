"""The entity-mentions fold, without any I/O."""

from __future__ import annotations

from projection_helpers import MENTIONS, Clock, as_recorded, interleave, lifecycle, of_run
from reference_view import apply, empty

from stageline.projections.entities import fold


def test_each_mention_adds_one_and_each_retraction_takes_it_back() -> None:
    events = of_run(lifecycle("r1", "undone", Clock()))
    mentioned = [i for i, e in enumerate(events) if e.type == "EntityMentioned"]
    first_retraction = next(i for i, e in enumerate(events) if e.type == "EntityMentionRetracted")

    before_undo = fold(events[:first_retraction])
    whole = fold(events)

    assert len(mentioned) == len(MENTIONS)
    assert {k: (e.name, e.type, e.mentions) for k, e in before_undo.entities.items()} == {
        f"{t}/{n}": (n, t, 1) for t, n in MENTIONS
    }
    # netted to 0 within the batch, yet still sent: a later batch may hold the retraction
    assert {k: e.mentions for k, e in whole.entities.items()} == {
        f"{t}/{n}": 0 for t, n in MENTIONS
    }
    undo = fold(events[first_retraction:])
    assert {e.mentions for e in undo.entities.values()} == {-1}


def test_undo_brings_every_count_back_whatever_the_batches() -> None:
    clock = Clock()
    lives = [lifecycle(f"m{i}", "mentioned", clock) for i in range(3)]
    lives += [lifecycle(f"u{i}", "undone", clock) for i in range(2)]
    events = as_recorded(interleave(lives))

    for size in (1, 4, len(events)):
        view = empty()
        for start in range(0, len(events), size):
            apply(view, fold(events[start : start + size]))
        assert {k: e["mentions"] for k, e in view["entities"].items()} == {
            f"{t}/{n}": 3 for t, n in MENTIONS
        }
