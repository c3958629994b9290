"""The FalkorDB adapter against the real embedded server: guarded writes and every reader."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from projection_helpers import (
    KINDS,
    MENTIONS,
    STAGES,
    T0,
    Clock,
    as_recorded,
    counts_match_rows,
    interleave,
    lifecycle,
    of_run,
    raw,
    write_views,
)

from stageline.actors.events import (
    RunFailed,
    RunSubmitted,
    StageCompleted,
    StageSkipped,
    StageStarted,
)
from stageline.errors import InvalidArgument, ViewOfNewerVersion
from stageline.events import RecordedEvent, new_event
from stageline.events.keys import graph_name
from stageline.projections import (
    ENTITIES,
    PIPELINES,
    RUN_STATUS,
    EntityChanges,
    FalkorDBViews,
    PipelineChanges,
    Write,
    _cypher,
    connect,
)
from stageline.projections.cypher_params import cypher_params
from stageline.projections.durations import MAX_BUCKET
from stageline.projections.run_status import fold

NO_RUNS = {
    "processing": 0,
    "retrying": 0,
    "completed": 0,
    "failed": 0,
    "compensated": 0,
    "cancelled": 0,
}


async def project(views: FalkorDBViews, workspace: str, events: list, expected: int = 0) -> int:
    return await write_views(views, workspace, events, expected)


async def test_a_projected_run_reads_back_with_its_stages(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "retried", Clock())
    await project(views, workspace, as_recorded([(life.stream, e) for e in life.events]))

    run = await views.get_run(workspace, "r1")

    assert run is not None
    json.dumps(run)  # plain JSON types only
    stages = run.pop("stages")
    assert run == {
        "id": "r1",
        "pipeline": "ingest",
        "pipeline_version": 2,
        "status": "completed",
        "current_stage": "embed",
        "submitted_at": "2026-03-01T12:00:00.005Z",
        "updated_at": "2026-03-01T12:00:00.050Z",
        "completed_at": "2026-03-01T12:00:00.050Z",
        "ended_at": "2026-03-01T12:00:00.050Z",
        "error": None,
        "dead_letter": None,
        "reason": None,
        "seq": 1,
    }
    assert [s["name"] for s in stages] == STAGES
    assert stages[0] == {
        "name": "fetch",
        "attempts": 2,
        "status": "completed",
        "index": 0,
        "started_at": "2026-03-01T12:00:00.020Z",
        "ended_at": "2026-03-01T12:00:00.025Z",
        "duration_ms": 10.0,
        "metadata": {"chars": 0},
        "error": None,
        "retry_at": None,
    }
    assert await views.get_run(workspace, "nope") is None


async def test_a_stale_checkpoint_applies_nothing(views: FalkorDBViews, workspace: str) -> None:
    lives = [lifecycle(f"r{i}", "retried", Clock()) for i in range(3)]
    changes = fold(as_recorded(interleave(lives)))
    assert await views.apply(workspace, RUN_STATUS, changes, expected=0)
    before = (await views.stats(workspace), await views.get_run(workspace, "r1"))

    # the same batch again, as a second projector (or a retry after a lost reply) would send it
    assert not await views.apply(workspace, RUN_STATUS, changes, expected=0)
    assert not await views.apply(workspace, RUN_STATUS, changes, expected=changes.position + 5)

    assert (await views.stats(workspace), await views.get_run(workspace, "r1")) == before
    assert before[0]["counts"]["completed"] == 3
    assert before[1] is not None
    assert before[1]["stages"][0]["attempts"] == 2
    assert await views.checkpoint(workspace) == changes.position


async def test_reads_leave_nothing_for_the_garbage_collector(
    views: FalkorDBViews, workspace: str
) -> None:
    """What a read makes is freed as it ends, not left in reference cycles for a collection
    (graph handles made per read once were: the API paused 52 ms to collect 195,000 such
    objects at 500 reads/s)."""
    lives = [lifecycle(f"r{i}", "retried", Clock()) for i in range(3)]
    changes = fold(as_recorded(interleave(lives)))
    assert await views.apply(workspace, RUN_STATUS, changes, expected=0)
    assert await views.get_run(workspace, "r1") is not None  # connections made

    gc.collect()
    gc.disable()  # what a read leaves behind stays countable
    try:
        for _ in range(20):
            assert await views.get_run(workspace, "r1") is not None
            assert (await views.stats(workspace))["total"] == 3
            await views.checkpoint(workspace)
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 10, left  # a graph handle made per read left 5 objects (300 here)


async def test_a_batch_without_run_events_only_moves_the_checkpoint(
    views: FalkorDBViews, workspace: str
) -> None:
    events = as_recorded([("orders-1", raw("OrderPlaced", {"n": i})) for i in range(4)])
    assert await views.apply(workspace, RUN_STATUS, fold(events), expected=0)
    assert await views.checkpoint(workspace) == 4
    assert (await views.stats(workspace))["total"] == 0


async def test_strings_survive_the_trip_whatever_they_hold(
    views: FalkorDBViews, workspace: str
) -> None:
    nasty = 'q"uote \\back\\slash \\u00e9 {"k": 1} \n\t\r é 🎉 \x01 `tick` $param'
    clock = Clock()
    events = as_recorded(
        [
            (
                "run-r1",
                new_event(
                    RunSubmitted(pipeline=nasty, pipeline_version=1, stages=[nasty], input={}),
                    occurred_at=clock(),
                ),
            ),
            ("run-r1", new_event(StageStarted(stage=nasty, index=0), occurred_at=clock())),
            (
                "run-r1",
                new_event(
                    StageCompleted(stage=nasty, index=0, metadata={nasty: [nasty, 1.5, None]}),
                    occurred_at=clock(),
                ),
            ),
            (
                "run-r1",
                new_event(RunFailed(stage=nasty, error_type="E", error=nasty), occurred_at=clock()),
            ),
        ]
    )
    await project(views, workspace, events)

    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert (run["pipeline"], run["error"], run["current_stage"]) == (nasty, f"E: {nasty}", nasty)
    assert run["stages"][0]["name"] == nasty
    assert run["stages"][0]["metadata"] == {nasty: [nasty, 1.5, None]}
    assert (await views.list_runs(workspace, pipeline=nasty))[0][0]["id"] == "r1"


def test_cypher_params_use_json_only_where_cypher_reads_it_the_same() -> None:
    assert cypher_params({}) == ""
    assert cypher_params({"a": [1, None, "x"], "b": 2.5}) == 'CYPHER a=[1,null,"x"] b=2.5 '
    # JSON map keys are quoted, Cypher's are not: keys that are names lose their quotes
    assert cypher_params({"m": [{"k": "v", "n": None}, {}]}) == 'CYPHER m=[{k:"v",n:null},{}] '
    # strings that look like keys stay as they are; a key that is not a name takes the
    # client's encoder
    assert cypher_params({"m": {"k": 'a"b": {"c":'}}) == 'CYPHER m={k:"a\\"b\\": {\\"c\\":"} '
    assert cypher_params({"m": {"k": "x\\", "n": 1}}) == 'CYPHER m={k:"x\\\\",n:1} '
    assert cypher_params({"m": {"k-1": "v"}}) == 'CYPHER m={`k-1`:"v"} '
    # a string starting with ':' after another is not a key, nor are the quotes around it
    assert cypher_params({"m": {"stage.a-1.x": ["v", ":b", "c"]}}) == (
        'CYPHER m={`stage.a-1.x`:["v",":b","c"]} '
    )
    assert cypher_params({"m": {":k": 1, "k": ["a,", ":b"]}}) == 'CYPHER m={`:k`:1,k:["a,",":b"]} '
    # nor a string starting with ':' as a value, beside keys ending as what may precede one
    assert cypher_params({"m": {"k": ":", "j:": 2, "[": [{"a,": "{"}]}}) == (
        'CYPHER m={k:":",`j:`:2,`[`:[{`a,`:"{"}]} '
    )
    # Cypher has no \u escapes: strings JSON would escape so take it too
    assert cypher_params({"s": "a\x01"}) == 'CYPHER s="a\x01" '


async def test_maps_in_parameters_reach_the_server_as_sent(
    views: FalkorDBViews, workspace: str
) -> None:
    sent = [
        {"k": 'x"y', "m": '{"a": [1, "b"]}', "n": None, "b": "back\\slash\\", "f": 1.5},
        {"k": 'x\\":', "l": ["a\\", {"in": '"'}], "e": ""},
        {"weird key": 1, "ok": "é", "stage.a-b.c": ["v", ":b", ","], "1x": {":": "x"}},
        {"k": "a\x01", "z": "🎉"},
        {"k": ":", "j:": 2, "[": [{"a,": "{", "b": ":x"}], "stage.a.b": [":", "a"]},
    ]
    graph = views.db.select_graph(graph_name(workspace))
    for value in sent:
        reply = await graph.query(cypher_params({"m": value}) + "RETURN $m")
        assert reply.result_set == [[value]]


async def test_runs_list_newest_first_a_page_at_a_time(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    kinds = ["completed", "failed", "running"] * 3
    lives = [
        lifecycle(f"r{i}", kind, clock, pipeline="a" if i % 2 else "b")
        for i, kind in enumerate(kinds)
    ]
    # one run after the other, so r8 has the highest seq
    await project(views, workspace, as_recorded([(x.stream, e) for x in lives for e in x.events]))

    pages, cursor = [], None
    while True:
        page, cursor = await views.list_runs(workspace, limit=4, cursor=cursor)
        pages.append([r["id"] for r in page])
        if cursor is None:
            break
    assert pages == [["r8", "r7", "r6", "r5"], ["r4", "r3", "r2", "r1"], ["r0"]]

    failed, cursor = await views.list_runs(workspace, status="failed")
    assert ([r["id"] for r in failed], cursor) == (["r7", "r4", "r1"], None)
    first, cursor = await views.list_runs(workspace, status="failed", pipeline="a", limit=1)
    assert [r["id"] for r in first] == ["r7"]
    rest, cursor = await views.list_runs(workspace, status="failed", pipeline="a", cursor=cursor)
    assert ([r["id"] for r in rest], cursor) == (["r1"], None)
    with pytest.raises(InvalidArgument):
        await views.list_runs(workspace, cursor="r5")


async def test_stats_count_runs_and_take_percentiles_of_completed_stages(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    lives = [
        lifecycle(f"r{i}", "completed", clock, durations=[10.0 * (i + 1), 5.0, 1.0])
        for i in range(10)
    ]
    lives += [lifecycle("f1", "failed", clock), lifecycle("x1", "running", clock)]
    await project(views, workspace, as_recorded(interleave(lives)))

    stats = await views.stats(workspace)

    assert stats["counts"] == {**NO_RUNS, "processing": 1, "completed": 10, "failed": 1}
    assert stats["total"] == 12
    # fetch took 10, 20 .. 100 ms in r0..r9, and 10 ms in f1 and x1: 12 values, so
    # sorted 10, 10, 10, 20 .. 100: p50 halfway between 40 and 50, p95 at 90 + 0.45 * 10;
    # read from log-scale buckets, each within 2% of the duration + 1 ms
    fetch, embed = stats["stages"]["fetch"], stats["stages"]["embed"]
    assert fetch == {"count": 12, "p50_ms": approx(45.0), "p95_ms": approx(94.5)}
    assert embed == {"count": 10, "p50_ms": approx(1.0), "p95_ms": approx(1.0)}
    # counted, not measured: 12, not 12.0 (FalkorDB's sum() of integers is a double)
    assert type(fetch["count"]) is int and type(embed["count"]) is int
    stored = await views._read(workspace, "MATCH (h:StageDurations) RETURN h.counts + h.sums")
    assert stored and all(type(n) is int for [values] in stored for n in values)


def approx(ms: float) -> Any:
    return pytest.approx(ms, abs=0.02 * (ms + 1))


async def test_stage_durations_leave_the_stats_when_the_stage_is_undone_or_run_again(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    undone = lifecycle("u1", "undone", clock, durations=[10.0, 500.0, 1.0])
    kept = lifecycle("k1", "completed", clock, durations=[10.0, 20.0, 1.0])
    again = lifecycle("a1", "completed", clock, durations=[10.0, 30.0, 1.0])
    events = as_recorded(interleave([undone, kept, again]))
    # one batch per event: each move out of a bucket reads what an earlier batch stored
    position = 0
    for event in events:
        changes = fold([event])
        assert await views.apply(workspace, RUN_STATUS, changes, expected=position)
        position = changes.position
    rerun = [(again.stream, new_event(StageStarted(stage="parse", index=1, attempt=2)))]
    later = fold(as_recorded(rerun, first_position=position + 1))
    assert await views.apply(workspace, RUN_STATUS, later, expected=position)

    stages = (await views.stats(workspace))["stages"]

    # u1's parse (500 ms) was compensated, a1's runs again: k1's 20 ms alone stands
    assert stages["parse"] == {"count": 1, "p50_ms": approx(20.0), "p95_ms": approx(20.0)}
    assert stages["fetch"]["count"] == 3


async def test_stage_durations_are_the_same_whatever_the_batches_and_match_the_runs(
    views: FalkorDBViews, workspace: str
) -> None:
    # every kind of run (undone, retried, skipped, dead, ...) with durations that are not
    # whole: an undo takes 100 ms out of the bucket into which others put 101.0x ms
    clock = Clock()
    lives = [
        lifecycle(
            f"{kind}{i}",
            kind,
            clock,
            durations=[12.345 * (i + 1), 100.0 if kind == "undone" else 101.0 + i / 100, 0.25],
        )
        for i in range(3)
        for kind in KINDS
    ]
    events = as_recorded(interleave(lives))
    seen = []
    for size in (1, 2, 5, 13, len(events)):
        await views.drop(workspace, RUN_STATUS)
        position = 0
        for start in range(0, len(events), size):
            changes = fold(events[start : start + size])
            assert await views.apply(workspace, RUN_STATUS, changes, expected=position)
            position = changes.position
        seen.append((await views.stats(workspace))["stages"])
    assert all(stages == seen[0] for stages in seen)  # to the microsecond

    # and they are what the runs' stages hold: each stage's completed durations
    durations: dict[str, list[float]] = {}
    for life in lives:
        run = await views.get_run(workspace, life.run_id)
        assert run is not None
        for stage in run["stages"]:
            if stage["status"] == "completed" and stage.get("duration_ms") is not None:
                durations.setdefault(stage["name"], []).append(stage["duration_ms"])
    assert set(seen[0]) == set(durations)
    for name, values in durations.items():
        ordered = sorted(values)
        mid = (len(ordered) - 1) / 2
        median = (ordered[int(mid)] + ordered[-int(-mid)]) / 2 if mid % 1 else ordered[int(mid)]
        assert seen[0][name]["count"] == len(values)
        assert seen[0][name]["p50_ms"] == approx(median)


async def test_a_duration_past_every_bucket_is_counted_in_the_last(
    views: FalkorDBViews, workspace: str
) -> None:
    # a clock's reading taken for a duration, and a float's most: bounded arrays
    life = lifecycle("r1", "completed", Clock(), durations=[1.7e12, 1e300, 5.0])
    await project(views, workspace, as_recorded(interleave([life])))

    stages = (await views.stats(workspace))["stages"]

    assert stages["fetch"]["count"] == stages["parse"]["count"] == 1
    assert stages["fetch"]["p50_ms"] == approx(1.7e12)
    assert stages["parse"]["p50_ms"] == approx(1.02**MAX_BUCKET)  # the last bucket's lowest
    graph = views.db.select_graph(graph_name(workspace))
    sizes = await graph.ro_query("MATCH (h:StageDurations) RETURN max(size(h.counts))")
    assert sizes.result_set == [[MAX_BUCKET + 1]]


async def test_a_workspace_never_projected_reads_as_empty(
    views: FalkorDBViews, workspace: str
) -> None:
    assert await views.checkpoint(workspace) == 0
    assert await views.get_run(workspace, "r1") is None
    assert await views.list_runs(workspace) == ([], None)
    stats = await views.stats(workspace)
    assert stats == {
        "counts": NO_RUNS,
        "total": 0,
        "stages": {},
    }
    assert await views.list_dead_letters(workspace, status=None) == ([], None)
    assert await views.get_dead_letter(workspace, "d1") is None
    assert await views.entities(workspace) == []
    assert await views.entity(workspace, "person", "Ada") is None
    assert await views.pipelines(workspace) == []
    assert await views.checkpoints(workspace) == {}
    assert not await views.wait_for(workspace, 1, timeout_s=0.05)


async def test_wait_for_returns_once_the_view_reaches_the_position(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "completed", Clock())
    events = as_recorded([(life.stream, e) for e in life.events])
    waiter = asyncio.create_task(views.wait_for(workspace, len(events), timeout_s=5))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await project(views, workspace, events)
    assert await asyncio.wait_for(waiter, 1)


async def test_drop_removes_the_view_and_its_checkpoint(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "completed", Clock())
    await project(views, workspace, as_recorded([(life.stream, e) for e in life.events]))

    await views.drop(workspace, RUN_STATUS)

    assert await views.checkpoint(workspace) == 0
    assert await views.get_run(workspace, "r1") is None
    assert (await views.stats(workspace))["total"] == 0
    # and the next batch from position 0 is accepted
    events = as_recorded([(life.stream, e) for e in life.events])
    await write_views(views, workspace, events, projections=(RUN_STATUS,))
    assert (await views.stats(workspace))["counts"]["completed"] == 1


async def test_each_projection_moves_only_its_own_checkpoint(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "mentioned", Clock())
    events = of_run(life)
    head = events[-1].position

    await write_views(views, workspace, events[:4], projections=(ENTITIES,))
    assert await views.checkpoints(workspace) == {"entities": 4}
    assert await views.get_run(workspace, "r1") is None
    await write_views(views, workspace, events, projections=(RUN_STATUS,))
    await write_views(views, workspace, events[4:], 4, projections=(ENTITIES,))

    assert await views.checkpoints(workspace) == {"run_status": head, "entities": head}
    assert await views.checkpoint(workspace, "pipelines") == 0
    assert await views.wait_for(workspace, head, 0.1, projection="entities")
    assert not await views.wait_for(workspace, 1, 0.05, projection="pipelines")
    assert [e["mentions"] for e in await views.entities(workspace)] == [1, 1]
    run = await views.get_run(workspace, "r1")
    assert run is not None and run["status"] == "completed"


async def test_writes_sent_together_are_each_guarded_on_their_own(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "mentioned", Clock())
    events = of_run(life)
    first = await write_views(views, workspace, events[:3])
    later, empty = events[3:], EntityChanges(position=20, events=1)

    applied = await views.apply_all(
        workspace,
        [
            Write(RUN_STATUS, fold(later), first),
            Write(ENTITIES, empty, first - 1),  # stale: refused
            Write(PIPELINES, PipelineChanges(position=20, events=1), first),
        ],
    )
    # the refused checkpoint move changed nothing, and a second try of the others is refused
    again = await views.apply_all(
        workspace,
        [Write(RUN_STATUS, fold(later), first), Write(PIPELINES, PipelineChanges(), first)],
    )

    assert applied == [True, False, True]
    assert again == [False, False]
    assert await views.checkpoints(workspace) == {
        "run_status": events[-1].position,
        "entities": first,
        "pipelines": 20,
    }
    run = await views.get_run(workspace, "r1")
    assert run is not None and [s["attempts"] for s in run["stages"]] == [1, 1, 1]


async def test_nodes_left_without_a_checkpoint_are_cleared_by_the_first_write(
    views: FalkorDBViews, workspace: str
) -> None:
    # an older version kept every view under the run_status checkpoint: the entities
    # projection then finds mention counts but no checkpoint of its own
    events = of_run(lifecycle("r1", "mentioned", Clock()))
    await write_views(views, workspace, events)
    graph = views.db.select_graph(graph_name(workspace))
    await graph.query("MATCH (c:Checkpoint {projection: 'entities'}) DELETE c")
    assert await views.checkpoint(workspace, "entities") == 0

    await write_views(views, workspace, events, projections=(ENTITIES,))

    assert [(e["key"], e["mentions"]) for e in await views.entities(workspace)] == [
        (f"{t}/{n}", 1) for t, n in sorted(MENTIONS, key=lambda m: m[1])
    ]
    assert await views.checkpoint(workspace, "entities") == events[-1].position
    assert (await views.stats(workspace))["counts"]["completed"] == 1


async def test_stage_events_for_unknown_runs_or_stages(
    views: FalkorDBViews, workspace: str
) -> None:
    clock = Clock()
    submitted = RunSubmitted(pipeline="p", pipeline_version=1, stages=["a"], input={})
    first = as_recorded(
        [
            ("run-r1", new_event(submitted, occurred_at=clock())),
            ("run-r1", new_event(StageStarted(stage="extra", index=5), occurred_at=clock())),
            ("run-ghost", new_event(StageStarted(stage="a", index=0), occurred_at=clock())),
        ]
    )
    position = await project(views, workspace, first)
    later = as_recorded(
        [("run-r1", new_event(StageStarted(stage="late", index=6), occurred_at=clock()))],
        first_position=position + 1,
    )
    position = await project(views, workspace, later, expected=position)
    # and in a batch of its own, one only skipped (no attempt)
    skipped = StageSkipped(stage="skip", index=7, reason="r", next_stage="a", next_index=0)
    last = as_recorded([("run-r1", new_event(skipped, occurred_at=clock()))], position + 1)
    await project(views, workspace, last, expected=position)

    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert [(s["name"], s["status"], s["attempts"]) for s in run["stages"]] == [
        ("a", "pending", 0),
        ("extra", "active", 1),
        ("late", "active", 1),
        ("skip", "skipped", 0),
    ]
    assert await views.get_run(workspace, "ghost") is None


async def test_a_repeated_submission_in_a_later_batch_keeps_the_run(
    views: FalkorDBViews, workspace: str
) -> None:
    life = lifecycle("r1", "completed", Clock())
    events = as_recorded([(life.stream, e) for e in life.events])
    position = await project(views, workspace, events)
    # a stage it did not name before is added, pending; the others stand
    again = RunSubmitted(pipeline="p2", pipeline_version=1, stages=[*STAGES, "late"], input={})
    restart = StageStarted(stage="parse", index=1, attempt=2)
    later = as_recorded(
        [(life.stream, new_event(again, occurred_at=T0)), (life.stream, new_event(restart))],
        first_position=position + 1,
        after=events,
    )
    await project(views, workspace, later, expected=position)

    run = await views.get_run(workspace, "r1")
    assert run is not None
    assert (run["pipeline"], run["status"], run["seq"]) == ("ingest", "completed", 1)
    # the first submission's stages stand, and the later batch's stage event still counts
    assert [(s["name"], s["status"], s["attempts"]) for s in run["stages"]] == [
        (STAGES[0], "completed", 1),
        (STAGES[1], "active", 2),
        (STAGES[2], "completed", 1),
        ("late", "pending", 0),
    ]
    # the restart clears what the first attempt left, though its batch holds a submission
    assert (run["stages"][1]["ended_at"], run["stages"][1]["duration_ms"]) == (None, None)
    assert await counts_match_rows(views, workspace) == {"completed": 1}


def test_connect_refuses_urls_it_cannot_honour() -> None:
    with pytest.raises(InvalidArgument):
        connect("redis://localhost:6379/3")
    with pytest.raises(InvalidArgument):
        connect("http://localhost")


async def test_connect_reaches_the_embedded_server(redis_url: str) -> None:
    db = connect(redis_url)
    try:
        assert isinstance(await db.list_graphs(), list)
    finally:
        await db.connection.aclose()


async def shaped(
    views: FalkorDBViews, workspace: str, shape: int | None
) -> tuple[Any, list[RecordedEvent], int, list[RecordedEvent]]:
    """Run r1 written to the run-status and entities views, then the run-status view's
    checkpoint given ``shape`` (None: none); the graph, r1's events, the position they
    reach, and the events of a run r2 that follow."""
    first, second = lifecycle("r1", "completed", Clock()), lifecycle("r2", "completed", Clock())
    events = of_run(first)
    position = await write_views(views, workspace, events, projections=(RUN_STATUS, ENTITIES))
    graph = views.db.select_graph(graph_name(workspace))
    value = "NULL" if shape is None else shape
    await graph.query(f"MATCH (c:Checkpoint {{projection: 'run_status'}}) SET c.shape = {value}")
    later = as_recorded([(second.stream, e) for e in second.events], first_position=position + 1)
    return graph, events, position, later


async def test_a_view_an_older_version_wrote_is_dropped_to_be_rebuilt(
    views: FalkorDBViews, workspace: str
) -> None:
    # a checkpoint without a shape: as stageline wrote it before it kept the stage
    # durations (and 0.1, before that, a node per stage, which the drop also deletes)
    graph, events, position, later = await shaped(views, workspace, None)
    await graph.query("CREATE (:Stage {key: 'r1/fetch', run_id: 'r1', attempts: 1})")
    restarted = FalkorDBViews(views.db)  # a new process checks the stored shape once

    # the next write finds the run-status view gone; the other projections stand
    writes = [Write(p, p.fold(later), position) for p in (RUN_STATUS, ENTITIES)]
    assert await restarted.apply_all(workspace, writes) == [False, True]
    assert await restarted.checkpoint(workspace) == 0
    assert await restarted.checkpoint(workspace, "entities") == later[-1].position
    assert (await graph.ro_query("MATCH (n:Stage) RETURN count(n)")).result_set == [[0]]

    # replayed from position 0 (as the projector then does), it reads back whole
    assert await write_views(restarted, workspace, events + later, projections=(RUN_STATUS,))
    run = await restarted.get_run(workspace, "r1")
    assert run is not None and [s["name"] for s in run["stages"]] == STAGES
    stats = await restarted.stats(workspace)
    assert stats["counts"]["completed"] == 2
    assert stats["stages"]["fetch"]["count"] == 2


async def test_a_view_a_newer_version_wrote_is_neither_written_nor_dropped(
    views: FalkorDBViews, workspace: str
) -> None:
    # a newer stageline, its run-status view in a shape past this version's, runs beside
    newer = RUN_STATUS.writer.shape + 1
    graph, _, position, later = await shaped(views, workspace, newer)
    before = await views.get_run(workspace, "r1")

    # a process that checked the shape before the newer one came: its writes are refused
    other = [("orders-1", raw("OrderPlaced", {}))]
    rows, moves = fold(later), fold(as_recorded(other, first_position=position + 1))
    assert moves.position and not moves.has_rows
    assert await views.apply_all(workspace, [Write(RUN_STATUS, rows, position)]) == [False]
    assert await views.apply_all(workspace, [Write(RUN_STATUS, moves, position)]) == [False]
    with pytest.raises(ViewOfNewerVersion) as raised:  # and it checks again after those
        await views.drop_outdated(workspace, [RUN_STATUS])
    assert raised.value.details == {
        "workspace": workspace,
        "projection": "run_status",
        "shape": newer,
        "own": RUN_STATUS.writer.shape,
    }
    assert "projections rebuild --projection run_status" in str(raised.value)

    # a process starting now does not write either; the other projections go on
    restarted = FalkorDBViews(views.db)
    with pytest.raises(ViewOfNewerVersion):
        await restarted.apply_all(workspace, [Write(RUN_STATUS, rows, position)])
    entities = Write(ENTITIES, ENTITIES.fold(later), position)
    assert await restarted.apply_all(workspace, [entities]) == [True]

    # the newer version's view stands as it was
    assert await views.checkpoint(workspace) == position
    assert await views.get_run(workspace, "r1") == before
    assert await views.get_run(workspace, "r2") is None
    stored = await graph.ro_query("MATCH (c:Checkpoint {projection: 'run_status'}) RETURN c.shape")
    assert stored.result_set == [[newer]]


async def test_a_first_write_is_refused_in_a_view_of_another_shape(
    views: FalkorDBViews, workspace: str
) -> None:
    # a newer version created the checkpoint meanwhile, still at the position of nothing
    newer = RUN_STATUS.writer.shape + 1
    graph = views.db.select_graph(graph_name(workspace))
    await views.drop_outdated(workspace, [RUN_STATUS])  # nothing there yet: checked
    await graph.query(
        f"CREATE (:Checkpoint {{projection: 'run_status', position: -1, shape: {newer}}})"
    )
    life = lifecycle("r1", "completed", Clock())
    events = as_recorded([(life.stream, e) for e in life.events])

    assert await views.apply_all(workspace, [Write(RUN_STATUS, fold(events), 0)]) == [False]
    assert await views.get_run(workspace, "r1") is None


async def test_a_rebuild_takes_back_a_view_a_newer_version_wrote(
    views: FalkorDBViews, workspace: str
) -> None:
    graph, events, _, _ = await shaped(views, workspace, RUN_STATUS.writer.shape + 1)
    restarted = FalkorDBViews(views.db)

    await restarted.drop(workspace, RUN_STATUS)  # what a rebuild starts with
    await write_views(restarted, workspace, events, projections=(RUN_STATUS,))

    run = await restarted.get_run(workspace, "r1")
    assert run is not None and run["status"] == "completed"
    stored = await graph.ro_query("MATCH (c:Checkpoint {projection: 'run_status'}) RETURN c.shape")
    assert stored.result_set == [[RUN_STATUS.writer.shape]]


async def test_an_outdated_view_is_dropped_once_by_writers_that_found_it_together(
    views: FalkorDBViews, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two projectors of the new version start together and both read the old shape
    _, events, _, _ = await shaped(views, workspace, None)
    first, second = FalkorDBViews(views.db), FalkorDBViews(views.db)
    read_by_second = await second._read(
        workspace, _cypher.STORED_SHAPE, {"projection": RUN_STATUS.name}
    )
    assert read_by_second == [[1]]
    # the first drops the view and writes its first batch in the new shape
    await write_views(first, workspace, events, projections=(RUN_STATUS,))

    async def as_read_before(*args: Any, **kwargs: Any) -> list[list[Any]]:
        return read_by_second

    monkeypatch.setattr(second, "_read", as_read_before)
    await second.drop_outdated(workspace, [RUN_STATUS])  # acts on what it read: old

    run = await first.get_run(workspace, "r1")
    assert run is not None and run["status"] == "completed"  # the first's batch stands
    assert await first.checkpoint(workspace) == events[-1].position
