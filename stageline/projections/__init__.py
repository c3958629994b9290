"""Read models folded from the log: pure folds, the FalkorDB adapter, the projector.

The folds are pure; the adapters (FalkorDB, the projector loop) are loaded only
when first used, so importing a fold never pulls in redis or falkordb.
"""

from typing import TYPE_CHECKING, Any

from stageline.projections.batch import fold
from stageline.projections.changes import (
    DeadLetterChange,
    EntityChange,
    RunChange,
    RunStatusChanges,
    StageChange,
)
from stageline.projections.dead_letters import DeadLetterKind, DeadLetterStatus
from stageline.projections.run_status import RunStatus, StageStatus

if TYPE_CHECKING:
    from stageline.projections.falkordb_views import FalkorDBViews, connect
    from stageline.projections.projector import Projector, RebuildResult, RunStatusView

_ADAPTERS = {
    "FalkorDBViews": "stageline.projections.falkordb_views",
    "connect": "stageline.projections.falkordb_views",
    "Projector": "stageline.projections.projector",
    "RebuildResult": "stageline.projections.projector",
    "RunStatusView": "stageline.projections.projector",
}


def __getattr__(name: str) -> Any:
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DeadLetterChange",
    "DeadLetterKind",
    "DeadLetterStatus",
    "EntityChange",
    "FalkorDBViews",
    "Projector",
    "RebuildResult",
    "RunChange",
    "RunStatus",
    "RunStatusChanges",
    "RunStatusView",
    "StageChange",
    "StageStatus",
    "connect",
    "fold",
]
