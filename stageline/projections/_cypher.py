"""The Cypher text of the FalkorDB views, and the positional rows a batch is sent as.

Rows are positional lists, not maps: a third of the bytes to send and parse,
and plain JSON is then valid Cypher. A field is ``[value]`` when the batch set
it (a null value removes the property) and null when the batch left it alone.

- run: ``[id, *RUN_FIELDS]``, a soft status as ``[value, true]``; a new run's row adds
  ``[created values, stage rows]``
- stage: ``[key, run_id, name, attempts, created values or null, *STAGE_FIELDS]``
- new dead letter: ``[id, stage key or null, deliveries, created values, *DEAD_LETTER_FIELDS]``
- other dead letter: ``[id, *DEAD_LETTER_FIELDS]``
- entity: ``[key, name, type, mentions delta]``
- pipeline config: ``[name, *PIPELINE_FIELDS]``
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stageline.projections.changes import RunStatusChanges
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.pipeline_configs import PIPELINE_FIELDS
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_ENDINGS,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatus,
)

INDEXES = [
    f"CREATE INDEX FOR (n:{label}) ON (n.{prop})"
    for label, prop in (
        ("Run", "id"), ("Run", "status"), ("Run", "seq"),
        ("Stage", "key"), ("Stage", "run_id"), ("Checkpoint", "projection"),
        ("DeadLetter", "id"), ("DeadLetter", "status"), ("Entity", "key"),
        ("PipelineConfig", "name"),
    )
]  # fmt: skip

_R, _S = 1, 5  # where the fields start in run and stage rows
_NEW = _R + len(RUN_FIELDS)  # a new run's created values, then its stages
_STATUS = _R + RUN_FIELDS.index("status")
_D = 4  # where the fields start in a new dead letter's row (1 in the others')


_ENDINGS = "[" + ", ".join(f"'{s}'" for s in sorted(RUN_ENDINGS)) + "]"


def _assign(var: str, row: str, fields: Iterable[str], first: int) -> str:
    def keep(i: int, f: str) -> str:
        if var == "r" and f == "status":  # a soft status ([value, true]) leaves an ending be
            return f"{row}[{i}] IS NULL OR (size({row}[{i}]) > 1 AND r.status IN {_ENDINGS})"
        return f"{row}[{i}] IS NULL"

    return ", ".join(
        f"{var}.{f} = CASE WHEN {keep(i, f)} THEN {var}.{f} ELSE {row}[{i}][0] END"
        for i, f in enumerate(fields, first)
    )


def _stage_merge() -> str:
    created = "".join(f", s.{f} = st[4][{i}]" for i, f in enumerate(STAGE_CREATED))
    return (
        "MERGE (r)-[:HAS_STAGE]->(s:Stage {key: st[0]})"
        f" ON CREATE SET s.run_id = st[1], s.name = st[2], s.attempts = 0{created}"
        f" SET s.attempts = s.attempts + st[3], {_assign('s', 'st', STAGE_FIELDS, _S)}"
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


# The MERGE creates a missing checkpoint at 0; a stored position other than
# $expected leaves no row, so nothing after it runs and the query returns nothing.
_GUARD = """MERGE (c:Checkpoint {projection: $projection})
ON CREATE SET c.position = 0
WITH c WHERE c.position = $expected
SET c.position = $position
WITH c
"""
# Each UNWIND sits in its own CALL {} so that an empty list cannot end the query.
# Dead letters come first: a run's entry counts its stage's attempts stored before
# this batch (the batch's own are in the row). A run is created only by the batch
# holding its RunSubmitted: its seq is that event's position, which is how a
# repeated RunSubmitted is told from the first. Stages of a new run are CREATEd
# (MERGE costs twice as much), others MERGEd.
WRITE = f"""{_GUARD}CALL {{
  UNWIND $new_dead_letters AS row
  OPTIONAL MATCH (s:Stage {{key: row[1]}})
  MERGE (d:DeadLetter {{id: row[0]}})
  ON CREATE SET {", ".join(f"d.{f} = row[3][{i}]" for i, f in enumerate(DEAD_LETTER_CREATED))},
    d.deliveries = coalesce(s.attempts, 0) + row[2]
  SET {_assign("d", "row", DEAD_LETTER_FIELDS, _D)}
}}
CALL {{
  UNWIND $dead_letters AS row
  MATCH (d:DeadLetter {{id: row[0]}})
  SET {_assign("d", "row", DEAD_LETTER_FIELDS, 1)}
}}
CALL {{
  UNWIND $new_runs AS row
  MERGE (r:Run {{id: row[0]}})
  ON CREATE SET {", ".join(f"r.{f} = row[{_NEW}][{i}]" for i, f in enumerate(RUN_CREATED))}
  SET {_assign("r", "row", RUN_FIELDS, _R)}
  WITH r, row, r.seq = row[{_NEW}][{RUN_CREATED.index("seq")}] AS fresh
  UNWIND row[{_NEW + 1}] AS st
  FOREACH (_ IN CASE WHEN fresh THEN [1] ELSE [] END | {_stage_create()})
  FOREACH (_ IN CASE WHEN fresh THEN [] ELSE [1] END | {_stage_merge()})
}}
CALL {{
  UNWIND $runs AS row
  MATCH (r:Run {{id: row[0]}})
  WITH r, row, r.status AS before
  SET {_assign("r", "row", RUN_FIELDS, _R)}
  RETURN collect(CASE WHEN before <> r.status THEN [before, r.status] END) AS moves
}}
CALL {{
  UNWIND $stages AS st
  MATCH (r:Run {{id: st[1]}})
  {_stage_merge()}
}}
CALL {{
  UNWIND $entities AS row
  MERGE (e:Entity {{key: row[0]}})
  ON CREATE SET e.name = row[1], e.type = row[2], e.mentions = 0
  SET e.mentions = e.mentions + row[3]
}}
CALL {{
  UNWIND $pipelines AS row
  MERGE (p:PipelineConfig {{name: row[0]}})
  SET {_assign("p", "row", PIPELINE_FIELDS, 1)}
}}
MERGE (n:Counts {{name: 'runs'}})
SET {", ".join(_count(i, s) for i, s in enumerate(RunStatus))}
RETURN c.position"""
ADVANCE = _GUARD + "RETURN c.position"
DROP = """CALL { MATCH (c:Checkpoint {projection: $projection}) DELETE c }
CALL { MATCH (s:Stage) DETACH DELETE s }
CALL { MATCH (r:Run) DETACH DELETE r }
CALL { MATCH (n:Counts {name: 'runs'}) DELETE n }
CALL { MATCH (d:DeadLetter) DELETE d }
CALL { MATCH (e:Entity) DELETE e }
CALL { MATCH (p:PipelineConfig) DELETE p }
RETURN 1"""

CHECKPOINT = "MATCH (c:Checkpoint {projection: $projection}) RETURN c.position"
GET_RUN = """MATCH (r:Run {id: $id})
OPTIONAL MATCH (r)-[:HAS_STAGE]->(s:Stage)
RETURN properties(r), collect(properties(s))"""
COUNTS = "MATCH (n:Counts {name: 'runs'}) RETURN properties(n)"
DURATIONS = """MATCH (s:Stage) WHERE s.status = 'completed'
RETURN s.name, count(s), percentileCont(s.duration_ms, 0.5), percentileCont(s.duration_ms, 0.95)
ORDER BY s.name"""
GET_DEAD_LETTER = "MATCH (d:DeadLetter {id: $id}) RETURN properties(d)"
GET_ENTITY = "MATCH (e:Entity {key: $key}) RETURN properties(e)"
PIPELINES = """MATCH (p:PipelineConfig) WHERE p.deleted = false
RETURN properties(p) ORDER BY p.name"""
ENTITIES = """MATCH (e:Entity) WHERE e.mentions > 0
RETURN properties(e) ORDER BY e.mentions DESC, e.name LIMIT $limit"""


def list_dead_letters(*, stage: bool, status: bool) -> str:
    """The query listing dead letters newest first, filtered by ``$stage``/``$status`` if asked."""
    where = [c for c, on in (("d.stage = $stage", stage), ("d.status = $status", status)) if on]
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    return f"MATCH (d:DeadLetter) {condition}RETURN properties(d) ORDER BY d.seq DESC LIMIT $limit"


def _fields(fields: dict[str, Any], names: Iterable[str]) -> list[Any]:
    return [[fields[k]] if k in fields else None for k in names]


def write_params(changes: RunStatusChanges) -> dict[str, Any]:
    """The row parameters of ``WRITE`` for a batch's changes."""
    new_runs: list[list[Any]] = []
    runs: list[list[Any]] = []
    stages: list[list[Any]] = []
    nested: dict[str, list[list[Any]]] = {}
    for run in changes.runs.values():
        row: list[Any] = [run.run_id, *_fields(run.fields, RUN_FIELDS)]
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
            *_fields(stage.fields, STAGE_FIELDS),
        ]
        nested.get(stage.run_id, stages).append(stage_row)
    new_dead_letters, dead_letters = [], []
    for d in changes.dead_letters.values():
        fields = _fields(d.fields, DEAD_LETTER_FIELDS)
        if d.created is None:
            dead_letters.append([d.id, *fields])
        else:
            created = [d.created.get(k) for k in DEAD_LETTER_CREATED]
            new_dead_letters.append([d.id, d.stage_key, d.deliveries, created, *fields])
    return {
        "new_dead_letters": new_dead_letters,
        "dead_letters": dead_letters,
        "new_runs": new_runs,
        "runs": runs,
        "stages": stages,
        "entities": [[e.key, e.name, e.type, e.mentions] for e in changes.entities.values()],
        "pipelines": [
            [p.name, *_fields(p.fields, PIPELINE_FIELDS)] for p in changes.pipelines.values()
        ],
        "counts": [changes.counts.get(status, 0) for status in RunStatus],
    }
