"""The ``ontology`` projection's Cypher: types, counters and the discovery curve.

Nodes: ``(:OntologyType {name})`` per entity type; one ``(:OntologyCounters
{name: 'ontology'})``; ``(:DiscoveredPattern {id})`` per pattern id ever
added as discovered (so that each counts once); ``(:DiscoveryBucket {bucket})``
per bucket of ``BUCKET_RUNS`` runs, with the ``patterns`` discovered and
``types`` proposed in it.

A batch's type row: ``[name, *created, *pre, *fields]`` (a cell per
``TYPE_FIELDS``; rows with ``created`` go to ``$created``, the others to
``$updated``). A discovered pattern: ``[id, runs before it in the batch]``; proposed
types: ``[runs before them in the batch, how many]``. The buckets are placed with
the runs counter as stored before the batch, which is moved last.
"""

from __future__ import annotations

from typing import Any

from stageline.projections._cypher import assign, fields, graph_writer
from stageline.projections.ontology import (
    BUCKET_RUNS,
    COUNTERS,
    TYPE_FIELDS,
    OntologyChanges,
    TypeChange,
)

__all__ = ["BUCKETS", "COUNTERS_NODE", "TYPE_COUNTS", "WRITER", "write_params"]

_N = len(TYPE_FIELDS)
_CREATED, _PRE, _FIELDS = 1, 1 + _N, 1 + 2 * _N

_K = "(k:OntologyCounters {name: 'ontology'})"
_BUCKET = f"toInteger(floor((k.runs + row[{{i}}]) / {float(BUCKET_RUNS)}))"


def _types(head: str) -> str:
    return f"""{head}
  WITH row, existed, t
  SET {assign("t", "row", TYPE_FIELDS, _PRE, lambda cell, name: "NOT existed")}
  WITH row, t
  SET {assign("t", "row", TYPE_FIELDS, _FIELDS)}"""


_ROWS = f"""CALL {{
  WITH c
  WITH c WHERE $kept IS NOT NULL
  MATCH (t:OntologyType) WHERE NOT t.name IN $kept
  DETACH DELETE t
}}
CALL {{
{
    _types(f'''  WITH c
  UNWIND $created AS row
  OPTIONAL MATCH (o:OntologyType {{name: row[0]}})
  WITH row, o IS NOT NULL AS existed
  MERGE (t:OntologyType {{name: row[0]}})
  ON CREATE SET {assign("t", "row", TYPE_FIELDS, _CREATED)}''')
}
}}
CALL {{
{
    _types('''  WITH c
  UNWIND $updated AS row
  MATCH (t:OntologyType {name: row[0]})
  WITH row, true AS existed, t''')
}
}}
CALL {{
  WITH c
  MERGE {_K}
  ON CREATE SET {", ".join(f"k.{name} = 0" for name in COUNTERS)}
}}
CALL {{
  WITH c
  MATCH {_K}
  UNWIND $discovered AS row
  MERGE (d:DiscoveredPattern {{id: row[0]}})
  ON CREATE SET d.bucket = {_BUCKET.format(i=1)}, d.position = $position
  WITH d WHERE d.position = $position
  WITH d.bucket AS bucket, count(d) AS n
  MERGE (b:DiscoveryBucket {{bucket: bucket}})
  ON CREATE SET b.patterns = 0, b.types = 0
  SET b.patterns = b.patterns + n
}}
CALL {{
  WITH c
  MATCH {_K}
  UNWIND $proposed AS row
  WITH {_BUCKET.format(i=0)} AS bucket, toInteger(sum(row[1])) AS n
  MERGE (b:DiscoveryBucket {{bucket: bucket}})
  ON CREATE SET b.patterns = 0, b.types = 0
  SET b.types = b.types + n
}}
CALL {{
  WITH c
  MATCH {_K}
  SET {", ".join(f"k.{name} = k.{name} + $counters[{i}]" for i, name in enumerate(COUNTERS))}
}}"""


def _row(change: TypeChange) -> list[Any]:
    return [
        change.name,
        *fields(change.created or {}, TYPE_FIELDS),
        *fields(change.pre, TYPE_FIELDS),
        *fields(change.fields, TYPE_FIELDS),
    ]


def write_params(changes: OntologyChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    types = changes.types.values()
    return {
        "kept": changes.kept_types,
        "created": [_row(t) for t in types if t.created is not None],
        "updated": [_row(t) for t in types if t.created is None],
        "discovered": [[pid, runs] for pid, runs in changes.discovered.items()],
        "proposed": [[runs, n] for runs, n in changes.proposed.items()],
        "counters": [changes.counters[name] for name in COUNTERS],
    }


WRITER = graph_writer(
    rows=_ROWS,
    params=write_params,
    nodes=(
        "OntologyType",
        "OntologyCounters",
        "DiscoveredPattern",
        "DiscoveryBucket",
    ),
    indexes=(
        ("OntologyType", "name"),
        ("DiscoveredPattern", "id"),
        ("DiscoveryBucket", "bucket"),
    ),
)

TYPE_COUNTS = "MATCH (t:OntologyType) RETURN t.status, count(t)"
COUNTERS_NODE = f"MATCH {_K} RETURN properties(k)"
BUCKETS = """MATCH (b:DiscoveryBucket)
RETURN b.bucket, b.patterns, b.types ORDER BY b.bucket"""
