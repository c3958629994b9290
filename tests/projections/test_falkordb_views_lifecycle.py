"""Statuses, dead letters and mentions through the real FalkorDB writer, batch by batch.

Every test applies batches as the projector would, and checks after each that
the stored counts equal the statuses of the stored runs: a run whose
transitions fall in different batches must still move exactly one count.
"""

from __future__ import annotations

import pytest
from projection_helpers import (
    KINDS,
    STAGES,
    Clock,
    as_recorded,
    counts_match_rows,
    interleave,
    lifecycle,
    of_run,
    poison,
    raw,
    snapshot,
    write_views,
)

from stageline.actors.builtin.memory import EntityMentioned, EntityMentionRetracted
from stageline.actors.events import RunCancelled, RunCompensated, StageStarted
from stageline.errors import InvalidArgument
from stageline.events import RecordedEvent, new_event
from stageline.projections import RUN_STATUS, FalkorDBViews


class Writer:
    """Applies log entries to one workspace's views in batches, as the projector does."""

    def __init__(self, views: FalkorDBViews, workspace: str) -> None:
        self.views, self.workspace, self.position = views, workspace, 0

    async def __call__(self, events: list[RecordedEvent], batch_size: int | None = None) -> None:
        size = batch_size or len(events) or 1
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            self.position = await write_views(self.views, self.workspace, batch, self.position)

    def after(self, pairs: list) -> list[RecordedEvent]:
        """``(stream, event)`` pairs as the log entries following what was written."""
        return as_recorded(pairs, first_position=self.position + 1)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
async def test_counts_equal_the_rows_after_every_batch(
    views: FalkorDBViews, workspace: str, batch_size: int
) -> None:
    clock = Clock()
    lives = [lifecycle(f"{kind}{i}", kind, clock) for i in range(2) for kind in KINDS]
    events = as_recorded(interleave(lives))
    write = Writer(views, workspace)

    for start in range(0, len(events), batch_size):
        await write(events[start : start + batch_size])
        await counts_match_rows(views, workspace)

    live = await snapshot(views, workspace)
    assert {run_id: run["status"] for run_id, run in live["runs"].items()} == {
        life.run_id: life.status for life in lives
    }
    # the same log in one batch, elsewhere: the rebuilt view equals the live one
    rebuilt_in = f"{workspace}r"
    await Writer(views, rebuilt_in)(events)
    assert await snapshot(views, rebuilt_in) == live


async def test_a_retry_spread_over_three_batches_moves_its_run_each_time(
    views: FalkorDBViews, workspace: str
) -> None:
    events = of_run(lifecycle("r1", "retried", Clock()))  # 3: StageFailed, 4: StageStarted
    write = Writer(views, workspace)
    seen = []

    for part in (events[:3], events[3:4], events[4:]):
        await write(part)
        run = await views.get_run(workspace, "r1")
        assert run is not None
        fetch = run["stages"][0]
        seen.append((await counts_match_rows(views, workspace), run["status"], fetch["status"]))

    assert seen == [
        ({"retrying": 1}, "retrying", "retrying"),
        ({"processing": 1}, "processing", "active"),
        ({"completed": 1}, "completed", "completed"),
    ]
    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert [s["attempts"] for s in run["stages"]] == [2, 1, 1]


async def test_a_retrying_stage_shows_its_error_and_when_it_retries(
    views: FalkorDBViews, workspace: str
) -> None:
    await Writer(views, workspace)(of_run(lifecycle("r1", "retrying", Clock())))

    run = await views.get_run(workspace, "r1")

    assert run is not None
    fetch = run["stages"][0]
    assert (fetch["status"], fetch["attempts"], fetch["error"]) == ("retrying", 1, "Timeout: slow")
    assert fetch["retry_at"] == "2026-03-01T12:00:01.010Z"
    assert fetch["ended_at"] == "2026-03-01T12:00:00.015Z"


async def test_endings_after_completed_move_the_counts_and_stray_attempts_do_not(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "completed", Clock())
    write = Writer(views, workspace)
    await write(of_run(life))
    seen = [await counts_match_rows(views, workspace)]

    for payload in (
        StageStarted(stage="parse", index=1, attempt=2),  # the runtime never records this
        RunCancelled(reason="late"),
        StageStarted(stage="parse", index=1, attempt=3),
        RunCompensated(stages=STAGES),
    ):
        await write(write.after([(life.stream, new_event(payload))]))
        seen.append(await counts_match_rows(views, workspace))

    assert seen == [
        {"completed": 1},
        {"completed": 1},
        {"cancelled": 1},
        {"cancelled": 1},
        {"compensated": 1},
    ]
    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert (run["status"], run["reason"], run["completed_at"] is not None) == (
        "compensated",
        "undo",
        True,
    )
    assert run["stages"][1]["attempts"] == 3


@pytest.mark.parametrize("kind", ["cancelled", "undone", "redriven", "fallback", "skipped"])
async def test_every_split_of_a_run_ends_with_the_same_counts(
    views: FalkorDBViews, workspace: str, kind: str
) -> None:
    events = of_run(lifecycle("r1", kind, Clock()))
    for cut in range(1, len(events)):
        ws = f"{workspace}-{cut}"
        write = Writer(views, ws)
        await write(events[:cut])
        await counts_match_rows(views, ws)
        await write(events[cut:])
        assert await counts_match_rows(views, ws) == {KINDS[kind]: 1}


async def test_a_run_cancelled_while_a_stage_waits_for_its_retry_shows_it_pending(
    views: FalkorDBViews, workspace: str
) -> None:
    events = of_run(lifecycle("r1", "cancelled", Clock()))
    for cut in range(1, len(events)):  # the failure and the cancel in one batch or two
        ws = f"{workspace}-{cut}"
        write = Writer(views, ws)
        await write(events[:cut])
        await write(events[cut:])
        run = await views.get_run(ws, "r1")
        assert run is not None and run["status"] == "cancelled"
        fetch = run["stages"][0]
        assert (fetch["name"], fetch["status"], fetch["retry_at"]) == ("fetch", "pending", None)
        assert fetch["error"] == "Timeout: slow"  # the last attempt's error stays
        assert [s["status"] for s in run["stages"][1:]] == ["pending", "pending"]


@pytest.mark.parametrize(
    ("endings", "status"),
    [
        ([RunCancelled(reason="user asked")], "cancelled"),
        ([RunCompensated(stages=STAGES)], "compensated"),
        ([RunCancelled(reason="user asked"), RunCompensated(stages=STAGES)], "compensated"),
    ],
)
async def test_a_stage_running_when_its_run_is_cancelled_or_undone_shows_cancelled(
    views: FalkorDBViews, workspace: str, endings: list, status: str
) -> None:
    life = lifecycle("r1", "running", Clock())  # parse started, and never ends
    events = as_recorded([(life.stream, e) for e in [*life.events, *map(new_event, endings)]])
    live = None
    for cut in range(1, len(events)):  # the start and the ending in one batch or two
        ws = f"{workspace}-{cut}"
        write = Writer(views, ws)
        await write(events[:cut])
        await write(events[cut:])
        run = await views.get_run(ws, "r1")
        assert run is not None and run["status"] == status
        assert [(s["name"], s["status"]) for s in run["stages"]] == [
            ("fetch", "completed"), ("parse", "cancelled"), ("embed", "pending"),
        ]  # fmt: skip
        assert run["stages"][1]["started_at"] is not None
        live = live or run
        assert run == live  # however the log was split into batches

    rebuilt_in = f"{workspace}-rebuilt"
    await Writer(views, rebuilt_in)(events)
    assert await views.get_run(rebuilt_in, "r1") == live


async def test_dead_letters_read_back_newest_first_and_by_status(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    dead, redriven = lifecycle("r1", "dead", clock), lifecycle("r2", "redriven", clock)
    pairs = [(dead.stream, e) for e in dead.events] + [
        (redriven.stream, e) for e in redriven.events
    ]
    pairs += poison("p1", clock, run_id="r9") + poison("p2", clock, closed="discarded")
    # two entries a batch: r1's failure (8) lands in another batch than its attempts (4, 6)
    await Writer(views, workspace)(as_recorded(pairs), batch_size=2)

    entry = await views.get_dead_letter(workspace, dead.dead_letter or "")
    assert entry == {
        "id": dead.dead_letter,
        "kind": "run",
        "stream": "run-r1",
        "actor": None,
        "stage": "parse",
        "run_id": "r1",
        "error": 'ValueError: bad "doc"\nline 2',
        "created_at": "2026-03-01T12:00:00.040Z",
        "deliveries": 2,
        "status": "open",
        "closed_at": None,
        "reason": None,
        "raw": None,
        "raw_encoding": None,
    }
    opened, more = await views.list_dead_letters(workspace)
    assert more is None
    assert [d["id"] for d in opened] == ["p1", dead.dead_letter]
    assert opened[0]["kind"] == "poison"
    assert (opened[0]["actor"], opened[0]["deliveries"], opened[0]["stream"]) == (
        "parser",
        5,
        "dead-letters",
    )
    every, _ = await views.list_dead_letters(workspace, status=None)
    assert [d["id"] for d in every] == ["p2", "p1", redriven.dead_letter, dead.dead_letter]
    assert [d["status"] for d in every] == ["discarded", "open", "redriven", "open"]
    assert every[0]["closed_at"] == "2026-03-01T12:00:00.130Z"  # the 26th event
    assert every[0]["reason"] == "junk"
    assert every[2]["deliveries"] == 2
    assert [d["id"] for d in (await views.list_dead_letters(workspace, stage="parse"))[0]] == [
        dead.dead_letter
    ]
    # newest first, a page at a time: each one once
    pages, cursor = [], None
    while True:
        page, cursor = await views.list_dead_letters(workspace, status=None, limit=3, cursor=cursor)
        pages.append(page)
        if cursor is None:
            break
    assert pages == [every[:3], every[3:]]
    with pytest.raises(InvalidArgument, match="invalid cursor"):
        await views.list_dead_letters(workspace, cursor="-")
    # the run shows its dead letter until a retry reopens it
    r1, r2 = await views.get_run(workspace, "r1"), await views.get_run(workspace, "r2")
    assert r1 is not None and r2 is not None
    assert (r1["status"], r1["dead_letter"]) == ("failed", dead.dead_letter)
    assert (r2["status"], r2["dead_letter"], r2["error"]) == ("completed", None, None)
    with pytest.raises(InvalidArgument):
        await views.list_dead_letters(workspace, limit=0)


async def test_undo_brings_mention_counts_back_to_what_they_were(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    write = Writer(views, workspace)
    mentioned = [lifecycle(f"m{i}", "mentioned", clock) for i in range(2)]
    extra = EntityMentioned(entity="Python", entity_type="language", surface="py", start=0, end=2)
    lonely = EntityMentioned(entity="Zed", entity_type="person", surface="Zed", start=0, end=3)
    pairs = [*interleave(mentioned), ("notes", new_event(extra)), ("notes", new_event(lonely))]
    await write(as_recorded(pairs), batch_size=5)
    retract = EntityMentionRetracted(compensates="x", entity="Zed", entity_type="person")
    await write(write.after([("notes", new_event(retract))]))
    before = await views.entities(workspace)

    undone = lifecycle("u1", "undone", clock)
    events = write.after([(undone.stream, e) for e in undone.events])
    retracted = next(i for i, e in enumerate(events) if e.type == EntityMentionRetracted.topic)
    await write(events[:retracted], batch_size=3)
    during = await views.entities(workspace)
    await write(events[retracted:], batch_size=1)

    assert before == [
        {"key": "language/Python", "name": "Python", "type": "language", "mentions": 3},
        {"key": "person/Ada Lovelace", "name": "Ada Lovelace", "type": "person", "mentions": 2},
    ]
    assert [e["mentions"] for e in during] == [4, 3]
    assert await views.entities(workspace) == before
    assert await views.entities(workspace, limit=1) == before[:1]
    assert await views.entity(workspace, "person", "Ada Lovelace") == before[1]
    # every mention retracted: not listed, but still known
    assert await views.entity(workspace, "person", "Zed") == {
        "key": "person/Zed",
        "name": "Zed",
        "type": "person",
        "mentions": 0,
    }
    assert await views.entity(workspace, "person", "Nobody") is None
    run = await views.get_run(workspace, "u1")
    assert run is not None
    assert (run["status"], [s["status"] for s in run["stages"]]) == (
        "compensated",
        ["completed", "compensated", "completed"],
    )
    with pytest.raises(InvalidArgument):
        await views.entities(workspace, limit=0)


async def test_dropping_run_status_removes_its_dead_letters_and_nothing_else(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    life = lifecycle("r1", "mentioned", clock)
    pairs = [(life.stream, e) for e in life.events] + poison("p1", clock)
    events = as_recorded(pairs)
    await Writer(views, workspace)(events)
    entities = await views.entities(workspace)
    assert entities
    assert (await views.list_dead_letters(workspace))[0] != []

    await views.drop(workspace, RUN_STATUS)

    assert await views.checkpoint(workspace, "run_status") == 0
    assert await views.list_dead_letters(workspace, status=None) == ([], None)
    assert await views.get_dead_letter(workspace, "p1") is None
    assert await views.get_run(workspace, "r1") is None
    assert (await views.stats(workspace))["total"] == 0
    # the entities view and its checkpoint are another projection's
    assert await views.entities(workspace) == entities
    assert await views.checkpoint(workspace, "entities") == len(events)
    # the next batch from 0 builds run_status again, and only it
    more = as_recorded([*pairs, ("x", raw("Other", {}))])
    await write_views(views, workspace, more, projections=(RUN_STATUS,))
    assert [d["id"] for d in (await views.list_dead_letters(workspace))[0]] == ["p1"]
    assert await counts_match_rows(views, workspace) == {"completed": 1}
    assert await views.entities(workspace) == entities
    assert await views.checkpoint(workspace, "entities") == len(events)
