"""The ``run_status`` projection's Cypher: runs, stages, run counts and dead letters.

``(:Run)-[:HAS_STAGE]->(:Stage)`` nodes, a ``(:Counts {name: 'runs'})`` node
with one property per run status, and ``(:DeadLetter)`` nodes. The rows a
batch is sent as:

- run: ``[id, *RUN_FIELDS]``, a soft status as ``[value, true]``; a new run's row adds
  ``[created values, stage rows]``
- stage: ``[key, run_id, name, attempts, created values or null, *STAGE_FIELDS]``
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
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatus,
)

__all__ = ["WRITER", "list_dead_letters", "write_params"]

_R, _S = 1, 5  # where the fields start in run and stage rows
_NEW = _R + len(RUN_FIELDS)  # a new run's created values, then its stages
_STATUS = _R + RUN_FIELDS.index("status")
_D = 4  # where the fields start in a new dead letter's row (1 in the others')


_ENDINGS = "[" + ", ".join(f"'{s}'" for s in sorted(RUN_ENDINGS)) + "]"


def _soft(cell: str, name: str) -> str | None:
    # a soft status ([value, true]) leaves an ending be
    return f"size({cell}) > 1 AND r.status IN {_ENDINGS}" if name == "status" else None


def _stage_merge() -> str:
    created = "".join(f", s.{f} = st[4][{i}]" for i, f in enumerate(STAGE_CREATED))
    return (
        "MERGE (r)-[:HAS_STAGE]->(s:Stage {key: st[0]})"
        f" ON CREATE SET s.run_id = st[1], s.name = st[2], s.attempts = 0{created}"
        f" SET s.attempts = s.attempts + st[3], {assign('s', 'st', STAGE_FIELDS, _S)}"
    )


def _stage_create() -> str:
    # FalkorDB: a SET right after CREATE does not see the new node's properties
    # (CREATE (n) SET n.x = 0 SET n.x = n.x + 1 leaves x null), so every value
    # is computed from the row alone
    props = {"key": "st[0]", "run_id": "st[1]", "name": "st[2]", "attempts": "st[3]"}
    props |= {f: f"st[4][{i}]" for i, f in enumerate(STAGE_CREATED)}
    for i, f in enumerate(STAGE_FIELDS, _S):
        default = props.get(f, "null")
        props[f] = f"CASE WHEN st[{i}] IS NULL THEN {default} ELSE st[{i}][0] END"
    body = ", ".join(f"{k}: {v}" for k, v in props.items())
    return f"CREATE (r)-[:HAS_STAGE]->(:Stage {{{body}}})"


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
# (MERGE costs twice as much), others MERGEd.
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
  SET {assign("r", "row", RUN_FIELDS, _R, _soft)}
  WITH r, row, r.seq = row[{_NEW}][{RUN_CREATED.index("seq")}] AS fresh
  UNWIND row[{_NEW + 1}] AS st
  FOREACH (_ IN CASE WHEN fresh THEN [1] ELSE [] END | {_stage_create()})
  FOREACH (_ IN CASE WHEN fresh THEN [] ELSE [1] END | {_stage_merge()})
}}
CALL {{
  UNWIND $runs AS row
  MATCH (r:Run {{id: row[0]}})
  WITH r, row, r.status AS before
  SET {assign("r", "row", RUN_FIELDS, _R, _soft)}
  RETURN collect(CASE WHEN before <> r.status THEN [before, r.status] END) AS moves
}}
CALL {{
  UNWIND $stages AS st
  MATCH (r:Run {{id: st[1]}})
  {_stage_merge()}
}}
MERGE (n:Counts {{name: 'runs'}})
SET {", ".join(_count(i, s) for i, s in enumerate(RunStatus))}"""


def write_params(changes: RunStatusChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    new_runs: list[list[Any]] = []
    runs: list[list[Any]] = []
    stages: list[list[Any]] = []
    nested: dict[str, list[list[Any]]] = {}
    for run in changes.runs.values():
        row: list[Any] = [run.run_id, *fields(run.fields, RUN_FIELDS)]
        if run.soft:
            row[_STATUS] = [run.fields["status"], True]
        if run.created is None:
            runs.append(row)
        else:
            nested[run.run_id] = []
            new_runs.append([*row, [run.created.get(k) for k in RUN_CREATED], nested[run.run_id]])
    for stage in changes.stages.values():
        c = stage.created
        stage_row = [
            stage.key,
            stage.run_id,
            stage.name,
            stage.attempts,
            None if c is None else [c.get(k) for k in STAGE_CREATED],
            *fields(stage.fields, STAGE_FIELDS),
        ]
        nested.get(stage.run_id, stages).append(stage_row)
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
        "stages": stages,
        "counts": [changes.counts.get(status, 0) for status in RunStatus],
    }


_INDEXES = [
    ("Run", "id"), ("Run", "status"), ("Run", "seq"), ("Stage", "key"),
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
OPTIONAL MATCH (r)-[:HAS_STAGE]->(s:Stage)
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
