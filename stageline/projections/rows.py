"""How a view's stored rows read back: the shapes the API answers. Pure.

Rows are stored with times in epoch milliseconds, a stage's ``metadata`` as JSON
text and a null field as absent; they are shown with times as RFC 3339 text in UTC
(``2026-11-23T08:11:56.290Z``), ``metadata`` as the object it holds and every field
present, null or not. The FalkorDB adapter reads its nodes through these, and
``stageline replay`` its fold of an exported log, so both show a run alike:
``GET /v1/runs/{id}`` and a replay of the log can be compared with a plain diff.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    shown_stages,
)

__all__ = ["RUN_KEYS", "STAGE_KEYS", "iso", "run_row", "run_with_stages", "shape", "stage_row"]

RUN_KEYS = tuple(dict.fromkeys(("id", *RUN_CREATED, *RUN_FIELDS)))
"""A run's keys, in the order it is shown."""
RUN_TIMES = ("submitted_at", "updated_at", "completed_at", "ended_at")
STAGE_KEYS = tuple(dict.fromkeys(("name", "attempts", *STAGE_CREATED, *STAGE_FIELDS)))
"""A stage's keys, in the order it is shown."""
STAGE_TIMES = ("started_at", "ended_at", "retry_at")


def iso(ms: float | None) -> str | None:
    """A stored time (epoch milliseconds) as RFC 3339 text in UTC, to the millisecond."""
    if ms is None:
        return None
    second, milli = divmod(math.floor(ms), 1000)
    return f"{_second(second)}.{milli:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(second: int) -> str:
    # a run's times fall in a few seconds: a read shows ~15, and formatting each
    # with datetime took a fifth of GET /v1/runs/{id}'s time in the views
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def shape(
    props: Mapping[str, Any], keys: tuple[str, ...], times: tuple[str, ...]
) -> dict[str, Any]:
    """``keys`` of a stored row, in that order, null where absent; ``times`` as ``iso`` text."""
    out = {name: props.get(name) for name in keys}
    for name in times:
        out[name] = iso(out[name])
    return out


def run_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run as a run list shows it (without its stages)."""
    return shape(run, RUN_KEYS, RUN_TIMES)


def stage_row(stage: Mapping[str, Any]) -> dict[str, Any]:
    """A stored stage (``name``, ``attempts`` and its fields) as a run shows it."""
    out = shape(stage, STAGE_KEYS, STAGE_TIMES)
    if out["metadata"] is not None:
        out["metadata"] = msgspec.json.decode(out["metadata"])
    return out


def run_with_stages(run: Mapping[str, Any], stages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A stored run and its stored stages as ``GET /v1/runs/{id}`` shows them: the stages in
    pipeline order, under ``stages``."""
    out = run_row(run)
    shown = sorted(map(stage_row, stages), key=lambda s: (s["index"] is None, s["index"]))
    out["stages"] = shown_stages(out["status"], shown)
    return out
