"""Read models folded from the log: pure folds, the FalkorDB adapter, the projector."""

from stageline.projections.batch import fold
from stageline.projections.changes import (
    DeadLetterChange,
    EntityChange,
    RunChange,
    RunStatusChanges,
    StageChange,
)
from stageline.projections.dead_letters import DeadLetterKind, DeadLetterStatus
from stageline.projections.falkordb_views import FalkorDBViews, connect
from stageline.projections.projector import Projector, RebuildResult, RunStatusView
from stageline.projections.run_status import RunStatus, StageStatus

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
