"""The ``entities`` projection's Cypher: one ``(:Entity)`` node per entity, its net mentions.

A batch's row per entity: ``[key, name, type, mentions delta]``.
"""

from __future__ import annotations

from typing import Any

from stageline.projections._cypher import graph_writer
from stageline.projections.changes import EntityChanges

__all__ = ["GET_ENTITY", "WRITER", "list_entities", "write_params"]

_ROWS = """CALL {
  UNWIND $entities AS row
  MERGE (e:Entity {key: row[0]})
  ON CREATE SET e.name = row[1], e.type = row[2], e.mentions = 0
  SET e.mentions = e.mentions + row[3]
}"""


def write_params(changes: EntityChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    return {"entities": [[e.key, e.name, e.type, e.mentions] for e in changes.entities.values()]}


WRITER = graph_writer(
    rows=_ROWS, params=write_params, nodes=("Entity",), indexes=(("Entity", "key"),)
)

GET_ENTITY = "MATCH (e:Entity {key: $key}) RETURN properties(e)"

# rows after the key ($mentions, $name, $type) in the list's order (cursors.Key)
_AFTER = """ AND (e.mentions < $mentions OR (e.mentions = $mentions
  AND (e.name > $name OR (e.name = $name AND e.type > $type))))"""


def list_entities(*, after: bool) -> str:
    """The query listing entities with a standing mention, most mentioned first, then by
    name, then by type; after the key ``$mentions``, ``$name``, ``$type`` if asked."""
    condition = _AFTER if after else ""
    return f"""MATCH (e:Entity) WHERE e.mentions > 0{condition}
WITH e ORDER BY e.mentions DESC, e.name, e.type LIMIT $limit RETURN properties(e)"""
