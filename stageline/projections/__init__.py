"""Read models folded from the log: pure folds, the FalkorDB adapter, the projector."""

from stageline.projections.falkordb_views import FalkorDBViews, connect
from stageline.projections.projector import Projector, RebuildResult, RunStatusView
from stageline.projections.run_status import (
    RunChange,
    RunStatus,
    RunStatusChanges,
    StageChange,
    StageStatus,
    fold,
)

__all__ = [
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
