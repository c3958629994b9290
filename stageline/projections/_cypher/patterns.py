"""The ``patterns`` projection's Cypher: one ``(:Pattern)`` node per pattern id.

A batch's row per pattern: ``[id, *created, *pre, *fields, deactivate, matches,
runs_matched, first_seen, last_seen]``, each of ``created``, ``pre`` and
``fields`` one cell per ``PATTERN_FIELDS`` (see ``patterns.PatternChange``).
Rows with ``created`` go to ``$created`` (merged), the others to ``$updated``
(matched: they never make a node). An import first makes every active own
pattern the batch does not touch inactive.
"""

from __future__ import annotations

from typing import Any

from stageline.projections._cypher import assign, fields, graph_writer
from stageline.projections.patterns import (
    IMPORT_REASON,
    PATTERN_FIELDS,
    PatternChange,
    PatternChanges,
)

__all__ = ["PATTERN_COUNTS", "WRITER", "list_patterns", "write_params"]

_N = len(PATTERN_FIELDS)
_CREATED, _PRE, _FIELDS = 1, 1 + _N, 1 + 2 * _N
_DEACTIVATE = 1 + 3 * _N
_MATCHES, _RUNS, _FIRST, _LAST = (_DEACTIVATE + i for i in range(1, 5))

_OWN = "coalesce(p.is_global, false) = false"
_DEACTIVATED = (
    f"(row[{_DEACTIVATE}] = 'always' OR (row[{_DEACTIVATE}] = 'pre' AND existed))"
    f" AND p.active = true AND {_OWN}"
)


def _apply(head: str) -> str:
    """The SETs of one row after ``head`` has bound ``row``, ``existed`` and ``p``."""
    return f"""{head}
  WITH row, existed, p
  SET {assign("p", "row", PATTERN_FIELDS, _PRE, lambda cell, name: "NOT existed")}
  WITH row, existed, p
  SET p.removed_reason = CASE WHEN {_DEACTIVATED} THEN $reason ELSE p.removed_reason END,
      p.active = CASE WHEN {_DEACTIVATED} THEN false ELSE p.active END
  WITH row, p
  SET {assign("p", "row", PATTERN_FIELDS, _FIELDS)},
      p.matches = p.matches + row[{_MATCHES}],
      p.runs_matched = p.runs_matched + row[{_RUNS}],
      p.first_seen = CASE WHEN row[{_FIRST}] IS NULL THEN p.first_seen
        WHEN p.first_seen IS NULL OR row[{_FIRST}] < p.first_seen THEN row[{_FIRST}]
        ELSE p.first_seen END,
      p.last_seen = CASE WHEN row[{_LAST}] IS NULL THEN p.last_seen
        WHEN p.last_seen IS NULL OR row[{_LAST}] > p.last_seen THEN row[{_LAST}]
        ELSE p.last_seen END"""


_ROWS = f"""CALL {{
  WITH c
  WITH c WHERE $imported
  MATCH (p:Pattern)
  WHERE p.active = true AND {_OWN} AND NOT p.id IN $touched
  SET p.removed_reason = $reason, p.active = false
}}
CALL {{
{
    _apply(f'''  WITH c
  UNWIND $created AS row
  OPTIONAL MATCH (o:Pattern {{id: row[0]}})
  WITH row, o IS NOT NULL AS existed
  MERGE (p:Pattern {{id: row[0]}})
  ON CREATE SET p.matches = 0, p.runs_matched = 0,
    {assign("p", "row", PATTERN_FIELDS, _CREATED)}''')
}
}}
CALL {{
{
    _apply('''  WITH c
  UNWIND $updated AS row
  MATCH (p:Pattern {id: row[0]})
  WITH row, true AS existed, p''')
}
}}"""


def _row(change: PatternChange) -> list[Any]:
    return [
        change.id,
        *fields(change.created or {}, PATTERN_FIELDS),
        *fields(change.pre, PATTERN_FIELDS),
        *fields(change.fields, PATTERN_FIELDS),
        change.deactivate,
        change.matches,
        change.runs_matched,
        change.first_seen,
        change.last_seen,
    ]


def write_params(changes: PatternChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    patterns = changes.patterns.values()
    return {
        "imported": changes.imported,
        "reason": IMPORT_REASON,
        "touched": list(changes.patterns) if changes.imported else [],
        "created": [_row(p) for p in patterns if p.created is not None],
        "updated": [_row(p) for p in patterns if p.created is None],
    }


WRITER = graph_writer(
    rows=_ROWS, params=write_params, nodes=("Pattern",), indexes=(("Pattern", "id"),)
)


# rows after the key ($matches, $name, $id) in the list's order (cursors.Key)
_AFTER = """(p.matches < $matches OR (p.matches = $matches
  AND (p.name > $name OR (p.name = $name AND p.id > $id))))"""


def list_patterns(
    *,
    source: bool,
    entity_type: bool,
    include_removed: bool,
    is_global: bool | None = None,
    after: bool = False,
    limit: bool = True,
) -> str:
    """The patterns matching the filters asked for, most matched first, then by name, then
    by id: of ``is_global`` nodes only if it is not None, after the key ``$matches``,
    ``$name``, ``$id`` if asked, at most ``$limit`` if asked."""
    where = []
    if source:
        where.append("p.source = $source")
    if entity_type:
        where.append("p.entity_type = $entity_type")
    if not include_removed:
        where.append("p.active = true")
    if is_global is not None:
        where.append(f"coalesce(p.is_global, false) = {str(is_global).lower()}")
    if after:
        where.append(_AFTER)
    condition = f"WHERE {' AND '.join(where)}\n" if where else ""
    cut = " LIMIT $limit" if limit else ""
    return f"""MATCH (p:Pattern)
{condition}WITH p ORDER BY p.matches DESC, p.name, p.id{cut} RETURN properties(p)"""


PATTERN_COUNTS = f"""MATCH (p:Pattern) WHERE p.active = true AND {_OWN}
RETURN p.source, count(p)"""
"""Active patterns of the workspace's own (not global ones matched here), by source."""
