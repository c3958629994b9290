"""The Cypher of the FalkorDB views: what every projection's writer shares.

Each projection has its own ``(:Checkpoint {projection: <name>})`` node and
writes a batch with one query that first moves that checkpoint from the
position the writer expects to the batch's position, then writes the rows.
FalkorDB runs a graph's write queries one at a time, so a batch lands exactly
once or not at all, whatever other projectors or rebuilds do meanwhile.

Rows are positional lists, not maps: a third of the bytes to send and parse,
and plain JSON is then valid Cypher. A field is ``[value]`` when the batch set
it (a null value removes the property) and null when the batch left it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from stageline.projections.changes import Changes
from stageline.projections.projection import GraphWriter

__all__ = [
    "ADVANCE_ALL",
    "CHECKPOINTS",
    "CHECKPOINT_INDEX",
    "STORED_SHAPE",
    "assign",
    "fields",
    "graph_writer",
]

C = TypeVar("C", bound=Changes)

CHECKPOINT_INDEX = "CREATE INDEX FOR (n:Checkpoint) ON (n.projection)"
# by the index, never a label scan: FalkorDB (4.x) can hand a scan of the label a
# checkpoint a drop deleted, until the next checkpoint is created
CHECKPOINTS = "MATCH (c:Checkpoint) WHERE c.projection IN $names RETURN c.projection, c.position"

_CREATED = -1
"""The position of a checkpoint the guard has just created: nothing of the projection stands."""

_UNSHAPED = 1
"""The shape of a checkpoint stored without one: a version before shapes were kept."""

_SHAPE = f"coalesce(c.shape, {_UNSHAPED})"


def _guard(shape: int) -> str:
    # A stored position other than $expected, or a view in another shape (written by
    # another version of stageline), leaves no row, so nothing after the guard runs and
    # the query returns nothing.
    return f"""MATCH (c:Checkpoint {{projection: $projection}})
WHERE c.position = $expected AND {_SHAPE} = {shape}
SET c.position = $position
WITH c
"""


STORED_SHAPE = f"MATCH (c:Checkpoint {{projection: $projection}}) RETURN {_SHAPE}"
"""The shape of the projection's view (a row if its checkpoint exists)."""

ADVANCE_ALL = f"""UNWIND $advances AS a
MATCH (c:Checkpoint {{projection: a[0]}})
WHERE c.position = a[1] AND {_SHAPE} = a[3]
SET c.position = a[2]
RETURN a[0]"""
"""Moves several projections' checkpoints, each guarded on its own: ``$advances`` holds
``[projection, expected, position, shape]`` rows; returns the projections it moved."""


def _first_guard(nodes: Iterable[str], shape: int) -> str:
    # Writing from 0, the checkpoint may not exist yet: the MERGE creates it. One that
    # did not exist means any nodes of the projection were left by a writer without it
    # (an older version kept several views under one checkpoint): the same query clears
    # them before writing the first batch.
    clear = "".join(
        f"CALL {{ WITH c WITH c WHERE c.position = {_CREATED} MATCH (n:{node}) DETACH DELETE n }}\n"
        for node in nodes
    )
    return f"""MERGE (c:Checkpoint {{projection: $projection}})
ON CREATE SET c.position = {_CREATED}, c.shape = {shape}
WITH c WHERE c.position IN [$expected, {_CREATED}] AND {_SHAPE} = {shape}
{clear}SET c.position = $position
WITH c
"""


def graph_writer(
    *,
    rows: str,
    params: Callable[[C], dict[str, Any]],
    nodes: Iterable[str],
    indexes: Iterable[tuple[str, str]] = (),
    shape: int = _UNSHAPED,
    outdated: Iterable[str] = (),
) -> GraphWriter[C]:
    """A projection's writer.

    ``rows`` is the Cypher that writes a batch's rows after the guard (the
    checkpoint is bound to ``c``; each ``UNWIND`` best sits in its own
    ``CALL {}`` so that an empty list cannot end the query); ``params`` builds
    its parameters from the changes; ``nodes`` are the node patterns the
    projection owns (``"Run"``, ``"Counts {name: 'runs'}"``), which its drop
    deletes; ``indexes`` are ``(label, property)`` pairs to index; ``shape`` numbers
    what the view holds, from 1 (bumped when a version writes what an older one's view
    lacks: that view is dropped and rebuilt; every write is refused in a view of another
    shape, so a version writes only the views of its own);
    ``outdated`` are labels only an older shape wrote (its drop deletes them too).
    """
    outdated = tuple(outdated)
    nodes = (*nodes, *outdated)
    first = _first_guard(nodes, shape)
    guard = _guard(shape)
    done = "RETURN c.position"
    drop = "".join(f"CALL {{ MATCH (n:{node}) DETACH DELETE n }}\n" for node in nodes)
    # only while the checkpoint is of an older shape: a writer that read it so may find
    # another one has dropped it meanwhile and written the first batch of its own shape
    drop_older = (
        f"MATCH (c:Checkpoint {{projection: $projection}}) WHERE {_SHAPE} < {shape}\n"
        + "".join(f"CALL {{ WITH c MATCH (n:{node}) DETACH DELETE n }}\n" for node in nodes)
        + "DELETE c RETURN 1"
    )
    return GraphWriter(
        write=f"{guard}{rows}\n{done}",
        advance=f"{guard}{done}",
        write_first=f"{first}{rows}\n{done}",
        advance_first=f"{first}{done}",
        drop="CALL { MATCH (c:Checkpoint {projection: $projection}) DELETE c }\n"
        f"{drop}RETURN 1",
        drop_older=drop_older,
        params=params,
        nodes=nodes,
        indexes=tuple(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})" for label, prop in indexes),
        shape=shape,
    )


def assign(
    var: str,
    row: str,
    names: Iterable[str],
    first: int,
    keep: Callable[[str, str], str | None] = lambda cell, name: None,
) -> str:
    """``SET`` items writing fields ``names`` of ``var`` from ``row[first]`` on.

    A null cell leaves the property be; ``keep(cell, name)`` may give another
    condition under which the stored value stays.
    """

    def unchanged(cell: str, name: str) -> str:
        extra = keep(cell, name)
        return f"{cell} IS NULL" + (f" OR ({extra})" if extra else "")

    return ", ".join(
        f"{var}.{f} = CASE WHEN {unchanged(f'{row}[{i}]', f)} THEN {var}.{f} ELSE {row}[{i}][0] END"
        for i, f in enumerate(names, first)
    )


def fields(values: Mapping[str, Any], names: Iterable[str]) -> list[Any]:
    """The row cells of ``names``: ``[value]`` if the batch set it, else null."""
    return [[values[k]] if k in values else None for k in names]
