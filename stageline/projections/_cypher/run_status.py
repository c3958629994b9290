"""The ``run_status`` projection's Cypher: runs, stages, run counts and dead letters.

``(:Run)`` and ``(:Stage)`` nodes, a stage naming its run by ``run_id`` (an
indexed property, not an edge: an update finds a stage by its key alone,
where a path ``MERGE`` walked the run's edges), a ``(:Counts {name: 'runs'})``
node with one property per run status, and ``(:DeadLetter)`` nodes. The rows
a batch is sent as, a map holding only the fields the batch set (a null value
removes the property):

- run: ``[id, fields but status, status, stage rows]``, ``status`` null (unchanged),
  ``[value]`` or, when soft, ``[value, true]``; a new run's row adds its created values
- stage (in its run's row): ``[key, run_id, name, attempts, created values or null, fields]``
- new dead letter: ``[id, stage key or null, deliveries, created values, *DEAD_LETTER_FIELDS]``
- other dead letter: ``[id, *DEAD_LETTER_FIELDS]``
"""

from __future__ import annotations

from typing import Any

from stageline.projections._cypher import assign, fields, graph_writer
from stageline.projections.changes import RunStatusChanges
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_ENDINGS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatus,
)

__all__ = ["WRITER", "list_dead_letters", "write_params"]

_STAGES, _NEW = 3, 4  # where a run's stage rows and a new run's created values sit in its row
_D = 4  # where the fields start in a new dead letter's row (1 in the others')


_ENDINGS = "[" + ", ".join(f"'{s}'" for s in sorted(RUN_ENDINGS)) + "]"

# a soft status ([value, true]) leaves an ending be
_SET_RUN = (
    "SET r += row[1], r.status = CASE WHEN row[2] IS NULL"
    f" OR (size(row[2]) > 1 AND r.status IN {_ENDINGS}) THEN r.status ELSE row[2][0] END"
)
_STAGE_VALUES = tuple(dict.fromkeys((*STAGE_CREATED, *STAGE_FIELDS)))
_STAGE_CREATED = "".join(f", s.{f} = st[4][{i}]" for i, f in enumerate(STAGE_CREATED))


_STAGE_MERGE = (
    "MERGE (s:Stage {key: st[0]})"
    f" ON CREATE SET s.run_id = st[1], s.name = st[2], s.attempts = 0{_STAGE_CREATED}"
    " SET s += st[5], s.attempts = s.attempts + st[3]"
)


# A new run's stages are created with every value in the CREATE: a SET after it costs
# as much again (and, in FalkorDB, would not see the new node's properties: CREATE (n)
# SET n.x = 0 SET n.x = n.x + 1 leaves x null). A null value stores nothing.
_STAGE_CREATE = (
    "CREATE (s:Stage {key: st[0], run_id: st[1], name: st[2], attempts: st[3]"
    + "".join(
        f", {f}: coalesce(st[5].{f}, st[4][{STAGE_CREATED.index(f)}])"
        if f in STAGE_CREATED
        else f", {f}: st[5].{f}"
        for f in _STAGE_VALUES
    )
    + "})"
)


def _count(i: int, status: str) -> str:
    # runs created by the batch come counted ($counts); the others move from their stored status
    moved = (
        f"size([m IN moves WHERE m[1] = '{status}']) - size([m IN moves WHERE m[0] = '{status}'])"
    )
    return f"n.{status} = coalesce(n.{status}, 0) + $counts[{i}] + {moved}"


# Dead letters come first: a run's entry counts its stage's attempts stored before
# this batch (the batch's own are in the row). A run is created only by the batch
# holding its RunSubmitted: its seq is that event's position, which is how a
# repeated RunSubmitted is told from the first. Stages of a new run are CREATEd
# (MERGE costs twice as much), others found by their key. A stage comes in its
# run's row (every event that changes a stage changes its run's updated_at), so a
# stage of a run the view does not hold (no RunSubmitted) is not written.
_ROWS = f"""CALL {{
  UNWIND $new_dead_letters AS row
  OPTIONAL MATCH (s:Stage {{key: row[1]}})
  MERGE (d:DeadLetter {{id: row[0]}})
  ON CREATE SET {", ".join(f"d.{f} = row[3][{i}]" for i, f in enumerate(DEAD_LETTER_CREATED))},
    d.deliveries = coalesce(s.attempts, 0) + row[2]
  SET {assign("d", "row", DEAD_LETTER_FIELDS, _D)}
}}
CALL {{
  UNWIND $dead_letters AS row
  MATCH (d:DeadLetter {{id: row[0]}})
  SET {assign("d", "row", DEAD_LETTER_FIELDS, 1)}
}}
CALL {{
  UNWIND $new_runs AS row
  MERGE (r:Run {{id: row[0]}})
  ON CREATE SET {", ".join(f"r.{f} = row[{_NEW}][{i}]" for i, f in enumerate(RUN_CREATED))}
  {_SET_RUN}
  WITH r, row, r.seq = row[{_NEW}][{RUN_CREATED.index("seq")}] AS fresh
  UNWIND row[{_STAGES}] AS st
  FOREACH (_ IN CASE WHEN fresh THEN [1] ELSE [] END | {_STAGE_CREATE})
  FOREACH (_ IN CASE WHEN fresh THEN [] ELSE [1] END | {_STAGE_MERGE})
}}
CALL {{
  UNWIND $runs AS row
  MATCH (r:Run {{id: row[0]}})
  WITH r, row, r.status AS before
  {_SET_RUN}
  FOREACH (st IN row[{_STAGES}] | {_STAGE_MERGE})
  RETURN collect(CASE WHEN before <> r.status THEN [before, r.status] END) AS moves
}}
MERGE (n:Counts {{name: 'runs'}})
SET {", ".join(_count(i, s) for i, s in enumerate(RunStatus))}"""


def write_params(changes: RunStatusChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    new_runs: list[list[Any]] = []
    runs: list[list[Any]] = []
    nested: dict[str, list[list[Any]]] = {}
    for run in changes.runs.values():
        values = run.fields
        status = values.get("status")
        if status is not None:
            values = {k: v for k, v in values.items() if k != "status"}
            status = [status, True] if run.soft else [status]
        row = [run.run_id, values, status, nested.setdefault(run.run_id, [])]
        if run.created is None:
            runs.append(row)
        else:
            new_runs.append([*row, [run.created.get(k) for k in RUN_CREATED]])
    for stage in changes.stages.values():
        c = stage.created
        if stage.run_id not in nested:  # handlers change the run with its stage: never
            runs.append([stage.run_id, {}, None, nested.setdefault(stage.run_id, [])])
        created = None if c is None else [c.get(k) for k in STAGE_CREATED]
        nested[stage.run_id].append(
            [stage.key, stage.run_id, stage.name, stage.attempts, created, stage.fields]
        )
    new_dead_letters, dead_letters = [], []
    for d in changes.dead_letters.values():
        cells = fields(d.fields, DEAD_LETTER_FIELDS)
        if d.created is None:
            dead_letters.append([d.id, *cells])
        else:
            created = [d.created.get(k) for k in DEAD_LETTER_CREATED]
            new_dead_letters.append([d.id, d.stage_key, d.deliveries, created, *cells])
    return {
        "new_dead_letters": new_dead_letters,
        "dead_letters": dead_letters,
        "new_runs": new_runs,
        "runs": runs,
        "counts": [changes.counts.get(status, 0) for status in RunStatus],
    }


_INDEXES = [
    ("Run", "id"), ("Run", "status"), ("Run", "seq"), ("Stage", "key"), ("Stage", "run_id"),
    ("DeadLetter", "id"), ("DeadLetter", "status"),
]  # fmt: skip

WRITER = graph_writer(
    rows=_ROWS,
    params=write_params,
    nodes=("Stage", "Run", "Counts {name: 'runs'}", "DeadLetter"),
    indexes=_INDEXES,
)

# -- reads --------------------------------------------------------------------------

GET_RUN = """MATCH (r:Run {id: $id})
OPTIONAL MATCH (s:Stage {run_id: $id})
RETURN properties(r), collect(properties(s))"""
COUNTS = "MATCH (n:Counts {name: 'runs'}) RETURN properties(n)"
DURATIONS = """MATCH (s:Stage) WHERE s.status = 'completed'
RETURN s.name, count(s), percentileCont(s.duration_ms, 0.5), percentileCont(s.duration_ms, 0.95)
ORDER BY s.name"""
STALE_RUNS = """MATCH (r:Run) WHERE r.status IN ['processing', 'retrying']
AND r.updated_at < $since RETURN r.id ORDER BY r.updated_at LIMIT $limit"""
GET_DEAD_LETTER = "MATCH (d:DeadLetter {id: $id}) RETURN properties(d)"


def list_runs(where: list[str]) -> str:
    """The query listing runs newest first, under the ``where`` conditions (on ``r``)."""
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    return f"MATCH (r:Run) {condition}RETURN properties(r) ORDER BY r.seq DESC LIMIT $limit"


def list_dead_letters(*, stage: bool, status: bool) -> str:
    """The query listing dead letters newest first, filtered by ``$stage``/``$status`` if asked."""
    where = [c for c, on in (("d.stage = $stage", stage), ("d.status = $status", status)) if on]
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    return f"MATCH (d:DeadLetter) {condition}RETURN properties(d) ORDER BY d.seq DESC LIMIT $limit"
