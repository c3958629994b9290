"""The ``run_status`` projection's Cypher: runs with their stages, run counts and dead letters.

A ``(:Run)`` node holds its run's fields and its stages: ``stages`` names them
in the order they were first seen (the pipeline's, from ``RunSubmitted``),
``stage_attempts`` counts each one's attempts, and each stage field is a
property of its own, ``stage.<name>.<field>``. A ``(:Counts {name: 'runs'})``
node holds one property per run status, a ``(:PipelineCounts {pipeline})`` node
the same for each pipeline's runs, a ``(:StageDurations {pipeline, stage})`` node
the histogram of a stage's completed durations (``durations.py``: ``counts`` and
``sums`` by bucket), and there are ``(:DeadLetter)`` nodes.

One node per run, not one per stage: FalkorDB's time to write a run is mostly
its time per node (measured, for runs written whole: 111 µs a run with a node
per stage, 22 µs as one node), and a batch's stage fields are set with the
run's own, in one map, without a lookup per stage.

The rows a batch is sent as:

- run: ``[id, fields, status, stages, attempts, completed, created]``: the fields the batch
  set, the run's (but its status) and its stages' (``stage.<name>.<field>``), a null
  value removing the property (left out for a run new to the view, whose
  ``RunSubmitted`` opens its stream: it has nothing to remove); ``status`` null
  (unchanged), ``[value]`` or, when soft, ``[value, true]``; the names of the stages
  the batch changed (one the run does not hold yet is added), the attempts it added
  to each (null if none), ``[name, duration]`` of each it leaves completed (null if
  none), and each one's created values but those the batch sets
  (null unless the batch holds the run's ``RunSubmitted``). A new run's row adds its
  created values, and its stages' created values in one map, for a run it creates
  (whose stages are written whole, where a repeated submission's are added one at a
  time).
- reopened: ``[run id, [[stage, property prefix], ...]]``: the stages of a run the
  view may hold that the batch reopens (``StageChange.reopened``).
- new dead letter: ``[id, [run id, stage] or null, deliveries, created values, *DEAD_LETTER_FIELDS]``
- other dead letter: ``[id, *DEAD_LETTER_FIELDS]``
"""

from __future__ import annotations

import functools
from typing import Any

from stageline.projections._cypher import assign, fields, graph_writer
from stageline.projections.changes import RunStatusChanges, StageChange
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.durations import bucket_cypher, micros_cypher
from stageline.projections.run_status import RUN_CREATED, RUN_ENDINGS, RunStatus, StageStatus

__all__ = ["WRITER", "list_dead_letters", "stage_property", "write_params"]

_NAMES, _ATTEMPTS, _PLUS, _CREATED, _NEW, _FIRST = 3, 4, 5, 6, 7, 8  # where they sit in a run's row
_D = 4  # where the fields start in a new dead letter's row (1 in the others')


def stage_property(stage: str, field: str) -> str:
    """The run's property holding one field of one of its stages."""
    return _prefix(stage) + field


@functools.lru_cache(maxsize=4096)
def _prefix(stage: str) -> str:
    # FalkorDB names cannot hold a backtick: the stage name's % and backticks are %-escaped
    return f"stage.{stage.replace('%', '%25').replace('`', '%60')}."


_ENDINGS = "[" + ", ".join(f"'{s}'" for s in sorted(RUN_ENDINGS)) + "]"

# a soft status ([value, true]) leaves an ending be
_SET_RUN = (
    "SET r += row[1], r.status = CASE WHEN row[2] IS NULL"
    f" OR (size(row[2]) > 1 AND r.status IN {_ENDINGS}) THEN r.status ELSE row[2][0] END"
)


# An existing run's stages: those it does not hold yet are added one by one, with no
# attempts and their created values (row[_CREATED], aligned with the names; the batch's
# own fields are in the run's map), then attempts are added. Inline, not in a CALL (in
# which a WHERE leaving no row undoes the SETs before it), and each step in a FOREACH
# that a run with nothing to change skips: a SET writes even an unchanged value.
def _stages(fresh: str) -> str:
    n, a, c = _NAMES, _ATTEMPTS, _CREATED
    return f"""FOREACH (i IN CASE WHEN {fresh} THEN [] ELSE
      [i IN range(0, size(row[{n}]) - 1) WHERE NOT row[{n}][i] IN r.stages] END |
    SET r.stages = r.stages + row[{n}][i], r.stage_attempts = r.stage_attempts + 0,
      r += coalesce(row[{c}][i], {{}}))
  FOREACH (_ IN CASE WHEN {fresh} OR row[{a}] IS NULL THEN [] ELSE [1] END |
    SET r.stage_attempts = [i IN range(0, size(r.stages) - 1) | reduce(t = r.stage_attempts[i],
      j IN range(0, size(row[{n}]) - 1) |
      CASE WHEN row[{n}][j] = r.stages[i] THEN t + row[{a}][j] ELSE t END)])"""


def _count(status: str, node: str = "n", moves: str = "moves") -> str:
    # each move is [from, to, pipeline]: a run the batch created comes from null
    moved = (
        f"size([m IN {moves} WHERE m[1] = '{status}'])"
        f" - size([m IN {moves} WHERE m[0] = '{status}'])"
    )
    return f"{node}.{status} = coalesce({node}.{status}, 0) + {moved}"


# A run's stage durations move in and out of their pipeline's histograms
# (``durations.py``) as ``[pipeline, [[stage, duration], ...] or null, [[stage, duration,
# -1], ...] or null]``: into the buckets of the stages a run's row leaves completed
# (row[_PLUS]); out of the buckets of the stored durations of the stages the batch
# reopens ($reopened: [run id, [[name, property prefix], ...]]) that are stored
# completed, read before any run is written. Apart from the runs' rows, which would pay
# for the test in every row: reopening a completed stage (an undo) is rare. FalkorDB's
# sum() is a double even of integers: made an integer again, a bucket counts 3, not 3.0.
_DURATION = "r[x[1] + 'duration_ms']"
_REOPENED = f"""CALL {{
  UNWIND $reopened AS row
  MATCH (r:Run {{id: row[0]}})
  RETURN collect([r.pipeline, null, [x IN row[1]
    WHERE r[x[1] + 'status'] = 'completed' AND {_DURATION} IS NOT NULL
    | [x[0], {_DURATION}, -1]]]) AS undone
}}"""
_DURATIONS = (
    f"collect(CASE WHEN row[{_PLUS}] IS NULL THEN null ELSE [r.pipeline, row[{_PLUS}]] END)"
)


# Dead letters come first: a run's entry counts its stage's attempts stored before
# this batch (the batch's own are in the row). A run is created only by the batch
# holding its RunSubmitted, with its stages: its seq is that event's position, which
# is how a repeated RunSubmitted is told from the first (whose stages stand; one it
# did not name is added, pending). A stage comes in its run's row (every event that
# changes a stage changes its run's updated_at), so a stage of a run the view does not
# hold (no RunSubmitted) is not written. The counts follow the runs' moves: a run the
# batch created counts where the batch leaves it, a repeated RunSubmitted's run only if
# its status moved.
_ROWS = f"""CALL {{
  UNWIND $new_dead_letters AS row
  OPTIONAL MATCH (r:Run {{id: row[1][0]}})
  MERGE (d:DeadLetter {{id: row[0]}})
  ON CREATE SET {", ".join(f"d.{f} = row[3][{i}]" for i, f in enumerate(DEAD_LETTER_CREATED))},
    d.deliveries = reduce(a = 0, i IN range(0, size(coalesce(r.stages, [])) - 1) |
      CASE WHEN r.stages[i] = row[1][1] THEN r.stage_attempts[i] ELSE a END) + row[2]
  SET {assign("d", "row", DEAD_LETTER_FIELDS, _D)}
}}
CALL {{
  UNWIND $dead_letters AS row
  MATCH (d:DeadLetter {{id: row[0]}})
  SET {assign("d", "row", DEAD_LETTER_FIELDS, 1)}
}}
{_REOPENED}
CALL {{
  UNWIND $new_runs AS row
  MERGE (r:Run {{id: row[0]}})
  ON CREATE SET r += row[{_FIRST}], r.stages = row[{_NAMES}],
    r.stage_attempts = coalesce(row[{_ATTEMPTS}], [n IN row[{_NAMES}] | 0]),
    {", ".join(f"r.{f} = row[{_NEW}][{i}]" for i, f in enumerate(RUN_CREATED))}
  WITH r, row, r.seq = row[{_NEW}][{RUN_CREATED.index("seq")}] AS fresh
  WITH r, row, fresh, CASE WHEN fresh THEN null ELSE r.status END AS before
  {_stages("fresh")}
  {_SET_RUN}
  RETURN collect(CASE WHEN fresh OR before <> r.status THEN [before, r.status, r.pipeline] END)
    AS born, {_DURATIONS} AS born_durations
}}
CALL {{
  UNWIND $runs AS row
  MATCH (r:Run {{id: row[0]}})
  WITH r, row, r.status AS before
  {_SET_RUN}
  {_stages("false")}
  RETURN collect(CASE WHEN before <> r.status THEN [before, r.status, r.pipeline] END) AS moved,
    {_DURATIONS} AS moved_durations
}}
WITH c, born + moved AS moves, undone + born_durations + moved_durations AS durations
MERGE (n:Counts {{name: 'runs'}})
SET {", ".join(_count(s) for s in RunStatus)}
WITH c, moves, durations
CALL {{
  WITH moves
  UNWIND moves AS m
  WITH m[2] AS pipeline, collect(m) AS ms
  MERGE (p:PipelineCounts {{pipeline: pipeline}})
  SET {", ".join(_count(s, "p", "ms") for s in RunStatus)}
}}
CALL {{
  WITH durations
  UNWIND durations AS ds
  UNWIND coalesce(ds[1], []) + coalesce(ds[2], []) AS x
  WITH ds[0] AS pipeline, x[0] AS stage, {bucket_cypher("x[1]")} AS bucket,
    coalesce(x[2], 1) AS sign, {micros_cypher("x[1]")} AS micros
  WITH pipeline, stage, bucket, toInteger(sum(sign)) AS k, toInteger(sum(sign * micros)) AS us
  WHERE k <> 0 OR us <> 0
  WITH pipeline, stage, collect([bucket, k, us]) AS ks
  MERGE (h:StageDurations {{pipeline: pipeline, stage: stage}})
  ON CREATE SET h.counts = [], h.sums = []
  WITH h, ks, reduce(top = 0, x IN ks | CASE WHEN x[0] > top THEN x[0] ELSE top END) AS top
  WITH h, ks, [i IN range(size(h.counts), top) | 0] AS more
  SET h.counts = reduce(a = h.counts + more, x IN ks | a[..x[0]] + [a[x[0]] + x[1]] + a[x[0] + 1..]),
    h.sums = reduce(a = h.sums + more, x IN ks | a[..x[0]] + [a[x[0]] + x[2]] + a[x[0] + 1..])
}}"""


def _stage_rows(stages: list[StageChange], nulls: bool = True) -> list[Any]:
    """A run's stages' cells: their fields (by property; without those set to None unless
    ``nulls``), their names, the attempts each adds (None if none does), and the
    durations of those the batch leaves completed (``[name, duration]``, None if none)."""
    values = {
        _prefix(s.name) + f: v
        for s in stages
        for f, v in s.fields.items()
        if nulls or v is not None
    }
    attempts = [s.attempts for s in stages]
    plus = [
        [s.name, d]
        for s in stages
        if s.fields.get("status") == StageStatus.COMPLETED
        and (d := s.fields.get("duration_ms")) is not None  # the fold keeps only numbers
    ]
    return [values, [s.name for s in stages], attempts if any(attempts) else None, plus or None]


def write_params(changes: RunStatusChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    by_run: dict[str, list[StageChange]] = {}
    for stage in changes.stages.values():
        by_run.setdefault(stage.run_id, []).append(stage)
    new_runs: list[list[Any]] = []
    runs: list[list[Any]] = []
    for run_id, run in changes.runs.items():
        stages = by_run.get(run_id, [])
        # a null only removes a property: a new run has none to remove
        nulls = not run.new
        values, names, *cells = _stage_rows(stages, nulls)
        status = run.fields.get("status")
        values.update(
            (k, v) for k, v in run.fields.items() if k != "status" and (nulls or v is not None)
        )
        if status is not None:
            status = [status, True] if run.soft else [status]
        row = [run_id, values, status, names, *cells]
        if run.created is None:
            runs.append([*row, None])
        else:
            # a stage's created values, but those the batch sets (they go in the run's map)
            first = [
                {_prefix(s.name) + f: v for f, v in (s.created or {}).items() if f not in s.fields}
                for s in stages
            ]
            created = [run.created.get(k) for k in RUN_CREATED]
            new_runs.append([*row, first, created, {k: v for m in first for k, v in m.items()}])
    for run_id in [r for r in by_run if r not in changes.runs]:  # handlers change both: never
        values, names, *cells = _stage_rows(by_run[run_id])
        runs.append([run_id, values, None, names, *cells, None])
    # a run new to the view (its RunSubmitted opens its stream) has stored no stage
    reopened = [
        [run_id, [[s.name, _prefix(s.name)] for s in stages if s.reopened]]
        for run_id, stages in by_run.items()
        if not (run_id in changes.runs and changes.runs[run_id].new)
        and any(s.reopened for s in stages)
    ]
    new_dead_letters, dead_letters = [], []
    for d in changes.dead_letters.values():
        cells = fields(d.fields, DEAD_LETTER_FIELDS)
        if d.created is None:
            dead_letters.append([d.id, *cells])
        else:
            created = [d.created.get(k) for k in DEAD_LETTER_CREATED]
            new_dead_letters.append([d.id, d.stage, d.deliveries, created, *cells])
    return {
        "new_dead_letters": new_dead_letters,
        "dead_letters": dead_letters,
        "reopened": reopened,
        "new_runs": new_runs,
        "runs": runs,
    }


_INDEXES = [
    ("Run", "id"), ("Run", "status"), ("Run", "seq"), ("DeadLetter", "id"), ("DeadLetter", "status"),
    ("PipelineCounts", "pipeline"), ("StageDurations", "pipeline"),
]  # fmt: skip

WRITER = graph_writer(
    rows=_ROWS,
    params=write_params,
    nodes=("Run", "Counts {name: 'runs'}", "PipelineCounts", "StageDurations", "DeadLetter"),
    indexes=_INDEXES,
    shape=2,  # 2: with PipelineCounts and StageDurations
    outdated=("Stage",),  # a node per stage, before the run held its stages (shape 1)
)

# -- reads --------------------------------------------------------------------------

GET_RUN = "MATCH (r:Run {id: $id}) RETURN properties(r)"
COUNTS = "MATCH (n:Counts {name: 'runs'}) RETURN properties(n)"


def stats(*, pipeline: bool) -> str:
    """One row: the run counts (null before any run), and per pipeline and stage name the
    histogram of completed durations (``durations.py``); of ``$pipeline`` only if asked."""
    counts = "PipelineCounts {pipeline: $pipeline}" if pipeline else "Counts {name: 'runs'}"
    condition = " WHERE h.pipeline = $pipeline" if pipeline else ""
    return f"""OPTIONAL MATCH (n:{counts})
WITH properties(n) AS counts
OPTIONAL MATCH (h:StageDurations){condition}
RETURN counts, collect([h.stage, h.counts, h.sums])"""


STALE_RUNS = """MATCH (r:Run) WHERE r.status IN ['processing', 'retrying']
AND r.updated_at < $since AND (r.updated_at > $at OR (r.updated_at = $at AND r.id > $id))
RETURN r.id, r.updated_at ORDER BY r.updated_at, r.id LIMIT $limit"""
GET_DEAD_LETTER = "MATCH (d:DeadLetter {id: $id}) RETURN properties(d)"


def list_runs(where: list[str]) -> str:
    """The query listing runs newest first, under the ``where`` conditions (on ``r``)."""
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    # sorted and cut before properties(), which would otherwise be built for every run
    # (10k runs: 45 ms, against 3 ms)
    return f"MATCH (r:Run) {condition}WITH r ORDER BY r.seq DESC LIMIT $limit RETURN properties(r)"


OPEN_DEAD_LETTERS = "MATCH (d:DeadLetter) WHERE d.status = 'open' RETURN d.stage, count(d)"


def list_dead_letters(
    *, stage: bool, status: bool, actor: bool = False, before: bool = False
) -> str:
    """The query listing dead letters newest first, filtered by ``$stage``/``$status``/``$actor``
    if asked, from the one just older than ``$before`` (a ``seq``) if asked."""
    filters = (
        ("d.stage = $stage", stage),
        ("d.status = $status", status),
        ("d.actor = $actor", actor),
        ("d.seq < $before", before),
    )
    where = [c for c, on in filters if on]
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    return (
        f"MATCH (d:DeadLetter) {condition}"
        "WITH d ORDER BY d.seq DESC LIMIT $limit RETURN properties(d)"
    )
