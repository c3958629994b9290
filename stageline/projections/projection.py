"""What a projection is: a name, a pure fold, and the writer of its changes to the graph.

``Projection`` ties them together; ``registry.PROJECTIONS`` lists every one.
Nothing here does I/O: the writer is Cypher text and a function building the
query's parameters, which the FalkorDB adapter sends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stageline.events import RecordedEvent
from stageline.projections.changes import Changes
from stageline.projections.cypher_params import cypher_params

__all__ = ["GraphWriter", "Projection", "Write"]

C = TypeVar("C", bound=Changes)


@dataclass(frozen=True, slots=True)
class GraphWriter(Generic[C]):
    """How one projection's changes are written to a workspace's graph (build it with
    ``_cypher.graph_writer``).

    Every query names the projection's checkpoint node with ``$projection``;
    the writes are guarded by ``$expected`` and move it to ``$position``,
    returning one row when they did and none when the stored checkpoint was
    elsewhere (then they change nothing).
    """

    write: str
    """Writes a batch's rows (``params(changes)``) and moves the checkpoint."""
    advance: str
    """Moves the checkpoint only: for a batch with nothing to write."""
    write_first: str
    """``write`` from position 0, where the checkpoint may not exist yet: creates it."""
    advance_first: str
    """``advance`` from position 0."""
    drop: str
    """Deletes every node of the projection and its checkpoint."""
    drop_older: str
    """``drop``, if the checkpoint is of an older shape than this writer's; else nothing."""
    params: Callable[[C], dict[str, Any]]
    """The row parameters of ``write`` for a batch's changes."""
    nodes: tuple[str, ...] = ()
    """The node patterns the projection owns (``"Run"``, ``"Counts {name: 'runs'}"``)."""
    indexes: tuple[str, ...] = ()
    """``CREATE INDEX`` statements for the projection's nodes."""
    shape: int = 1
    """What the view holds, numbered: the writes land only in a view of this shape. A
    view of an older shape is dropped (then rebuilt from the log); one of a newer shape,
    which a newer stageline wrote, is left to it (``ViewOfNewerVersion``)."""

    def query(self, changes: C, expected: int) -> tuple[str, dict[str, Any]]:
        """The query writing ``changes`` after ``expected``, and its row parameters."""
        if changes.has_rows:
            return (self.write_first if expected == 0 else self.write), self.params(changes)
        return (self.advance_first if expected == 0 else self.advance), {}


@dataclass(frozen=True, slots=True)
class Projection(Generic[C]):
    """One read model: its checkpoint's ``name``, its pure ``fold``, its graph ``writer``.

    ``fold`` turns a batch of log events (oldest first, any length) into the
    projection's changes; it must be pure, and the changes of consecutive
    batches must compose (see ``changes``), so that a rebuild equals the live
    view wherever the batch boundaries fall.
    """

    name: str
    fold: Callable[[Sequence[RecordedEvent]], C]
    writer: GraphWriter[C]


@dataclass(slots=True)
class Write:
    """One projection's changes to write, guarded by the checkpoint the writer ``expected``."""

    projection: Projection[Any]
    changes: Changes
    expected: int
    _query: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def built(
        cls, projection: Projection[Any], changes: Changes, expected: int, query: str
    ) -> Write:
        """A write whose query was built elsewhere (by a rebuild's worker process)."""
        write = cls(projection, changes, expected)
        write._query = query
        return write

    def query(self) -> str:
        """The query writing the changes, its parameters in its header; built once (a replay
        builds the next batch's while the server writes the one before)."""
        if self._query is None:
            changes = self.changes
            text, rows = self.projection.writer.query(changes, self.expected)
            params: dict[str, Any] = {
                "projection": self.projection.name,
                "expected": self.expected,
                "position": changes.position,
            }
            self._query = cypher_params(params | rows) + text
        return self._query
