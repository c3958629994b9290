"""The ``pipelines`` projection's Cypher: one ``(:PipelineConfig)`` node per workspace config.

A batch's row per config: ``[name, *PIPELINE_FIELDS]``.
"""

from __future__ import annotations

from typing import Any

from stageline.projections._cypher import assign, fields, graph_writer
from stageline.projections.changes import PipelineChanges
from stageline.projections.pipeline_configs import PIPELINE_FIELDS

__all__ = ["PIPELINES", "WRITER", "write_params"]

_ROWS = f"""CALL {{
  UNWIND $pipelines AS row
  MERGE (p:PipelineConfig {{name: row[0]}})
  SET {assign("p", "row", PIPELINE_FIELDS, 1)}
}}"""


def write_params(changes: PipelineChanges) -> dict[str, Any]:
    """The row parameters of the write for a batch's changes."""
    rows = [[p.name, *fields(p.fields, PIPELINE_FIELDS)] for p in changes.pipelines.values()]
    return {"pipelines": rows}


WRITER = graph_writer(
    rows=_ROWS,
    params=write_params,
    nodes=("PipelineConfig",),
    indexes=(("PipelineConfig", "name"),),
)

PIPELINES = """MATCH (p:PipelineConfig) WHERE p.deleted = false
RETURN properties(p) ORDER BY p.name"""
