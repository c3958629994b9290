"""Read models folded from the log: named projections, the FalkorDB adapter, the projector.

Every projection has a name, its own ``(:Checkpoint {projection: <name>})``
node, its own nodes in the workspace's graph, and can be rebuilt alone
(``stageline projections rebuild --projection <name>``):

- ``run_status``: runs, their stages and run counts, and dead letters (a run's
  dead letter counts its stage's stored attempts, so both are one projection);
- ``entities``: net entity mentions;
- ``pipelines``: the workspace's own pipeline configs.

Adding a projection takes three pieces, none of which does I/O:

1. a fold module ``stageline/projections/<name>.py``: a ``Changes`` subclass
   (in ``changes.py`` or beside the fold) and ``fold(events) -> <YourChanges>``,
   usually ``batch.fold_into(<YourChanges>(), events, handlers)`` over a table
   of event type -> (handler, run streams only?);
2. its Cypher ``stageline/projections/_cypher/<name>.py``: ``WRITER =
   _cypher.graph_writer(rows=..., params=..., nodes=..., indexes=...)``, the
   rows Cypher (run after the checkpoint guard, which binds it to ``c``),
   the function building its parameters from the changes, the node patterns
   the projection owns (its drop deletes them) and the indexes it needs;
3. one line in ``registry.PROJECTIONS``: ``Projection("<name>", <name>.fold,
   <name>_graph.WRITER)``.

The projector then follows it with the others (one log read per workspace),
catches it up from position 0 where it is new, and the CLI lists and
rebuilds it. Readers go in ``falkordb_views.FalkorDBViews``; an HTTP read
with ``min_position`` waits on that projection's checkpoint
(``views.wait_for(..., projection="<name>")``).

The folds are pure; the adapters (FalkorDB, the projector loop) are loaded only
when first used, so importing a fold or the registry never pulls in redis or falkordb.
"""

from typing import TYPE_CHECKING, Any

from stageline.projections.changes import (
    Changes,
    DeadLetterChange,
    EntityChange,
    EntityChanges,
    PipelineChange,
    PipelineChanges,
    RunChange,
    RunStatusChanges,
    StageChange,
)
from stageline.projections.dead_letters import DeadLetterKind, DeadLetterStatus
from stageline.projections.projection import GraphWriter, Projection, Write
from stageline.projections.registry import ENTITIES, NAMES, PIPELINES, PROJECTIONS, RUN_STATUS
from stageline.projections.run_status import RunStatus, StageStatus

if TYPE_CHECKING:
    from stageline.projections.falkordb_views import FalkorDBViews, connect
    from stageline.projections.projector import Projector, RebuildResult, ViewStore

_ADAPTERS = {
    "FalkorDBViews": "stageline.projections.falkordb_views",
    "connect": "stageline.projections.falkordb_views",
    "Projector": "stageline.projections.projector",
    "RebuildResult": "stageline.projections.projector",
    "ViewStore": "stageline.projections.projector",
}


def __getattr__(name: str) -> Any:
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "ENTITIES",
    "NAMES",
    "PIPELINES",
    "PROJECTIONS",
    "RUN_STATUS",
    "Changes",
    "DeadLetterChange",
    "DeadLetterKind",
    "DeadLetterStatus",
    "EntityChange",
    "EntityChanges",
    "FalkorDBViews",
    "GraphWriter",
    "PipelineChange",
    "PipelineChanges",
    "Projection",
    "Projector",
    "RebuildResult",
    "RunChange",
    "RunStatus",
    "RunStatusChanges",
    "StageChange",
    "StageStatus",
    "ViewStore",
    "Write",
    "connect",
]
