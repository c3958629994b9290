"""The FalkorDB adapter of the read models: one graph per workspace.

Run status lives as ``(:Run)-[:HAS_STAGE]->(:Stage)`` nodes and a ``(:Counts
{name: 'runs'})`` node with one property per run status; dead letters as
``(:DeadLetter)`` nodes, entity mentions as ``(:Entity)`` nodes, pipeline
configs as ``(:PipelineConfig)`` nodes; and a
``(:Checkpoint {projection: 'run_status'})`` node holds the last log position
applied. A batch of changes and its checkpoint are written by one query,
guarded by the checkpoint the writer expects: FalkorDB runs a graph's write
queries one at a time, so a batch is applied exactly once or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from falkordb.asyncio import FalkorDB
from falkordb.helpers import stringify_param_value
from redis.exceptions import ResponseError

from stageline.errors import InvalidArgument
from stageline.events.keys import graph_name
from stageline.events.redis_store import CONNECT_TIMEOUT_SECONDS, retry_policy
from stageline.projections import _cypher as q
from stageline.projections.changes import RunStatusChanges
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.pipeline_configs import PIPELINE_FIELDS
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatus,
)

__all__ = ["PROJECTION", "FalkorDBViews", "connect", "cypher_params"]

PROJECTION = "run_status"


def cypher_params(params: Mapping[str, Any]) -> str:
    """The ``CYPHER name=value ...`` header that carries a query's parameters.

    JSON without maps is valid Cypher, and encoding it is ~10x faster than the
    client's own encoder on big batches. Values holding maps (whose JSON keys
    are quoted) or strings that JSON would ``\\u``-escape take the client's encoder.
    """
    parts = ["CYPHER"]
    for name, value in params.items():
        text = msgspec.json.encode(value)
        # inside JSON strings '"' is always escaped: '{"' can only open a map
        if b"\\u" in text or b'{"' in text:
            parts.append(f"{name}={stringify_param_value(value)}")
        else:
            parts.append(f"{name}={text.decode()}")
    return " ".join(parts) + " " if params else ""


def connect(url: str) -> FalkorDB:
    """A FalkorDB client for the store's URL: ``unix:///path.sock`` or ``redis://host:port/0``.

    It connects and retries like the store's client (``redis_store.retry_policy``).
    """
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    password = password or parse_qs(parts.query).get("password", [None])[0]
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        db = FalkorDB(
            unix_socket_path=parts.path,
            username=username,
            password=password,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    elif parts.scheme in ("redis", "rediss"):
        # the client always selects database 0: a URL naming another would split the store
        if parts.path.strip("/") not in ("", "0"):
            raise InvalidArgument("FalkorDB views live in database 0", url=url)
        db = FalkorDB(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            username=username,
            password=password,
            ssl=parts.scheme == "rediss",
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    else:
        raise InvalidArgument("store URL must be unix://, redis:// or rediss://", url=url)
    # set afterwards: FalkorDB probes for a cluster with a sync client built from the same
    # arguments, which an asyncio Retry breaks
    db.connection.set_retry(retry_policy())
    return db


_RUN_KEYS = tuple(dict.fromkeys(("id", *RUN_CREATED, *RUN_FIELDS)))
_STAGE_KEYS = tuple(dict.fromkeys(("name", "attempts", *STAGE_CREATED, *STAGE_FIELDS)))
_DEAD_LETTER_KEYS = tuple(
    k for k in ("id", *DEAD_LETTER_CREATED, "deliveries", *DEAD_LETTER_FIELDS) if k != "seq"
)
_ENTITY_KEYS = ("key", "name", "type", "mentions")
_PIPELINE_KEYS = ("name", *(f for f in PIPELINE_FIELDS if f != "deleted"))


def _iso(ms: float | None) -> str | None:
    if ms is None:
        return None
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shape(
    props: Mapping[str, Any], keys: tuple[str, ...], times: tuple[str, ...]
) -> dict[str, Any]:
    out = {name: props.get(name) for name in keys}
    for name in times:
        out[name] = _iso(out[name])
    return out


def _run_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    return _shape(props, _RUN_KEYS, ("submitted_at", "updated_at", "completed_at", "ended_at"))


def _stage_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    out = _shape(props, _STAGE_KEYS, ("started_at", "ended_at", "retry_at"))
    if out["metadata"] is not None:
        out["metadata"] = msgspec.json.decode(out["metadata"])
    return out


def _dead_letter_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    return _shape(props, _DEAD_LETTER_KEYS, ("created_at", "closed_at"))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidArgument("limit must be >= 1", limit=limit)


class FalkorDBViews:
    """Writes and reads every workspace's views in FalkorDB.

    Run status, dead letters, entities and pipeline configs.
    """

    def __init__(self, db: FalkorDB) -> None:
        self.db = db
        self._ready: set[str] = set()

    @classmethod
    def from_url(cls, url: str) -> FalkorDBViews:
        return cls(connect(url))

    async def close(self) -> None:
        await self.db.connection.aclose()

    async def _ensure_schema(self, workspace: str) -> None:
        if workspace in self._ready:
            return
        graph = self.db.select_graph(graph_name(workspace))
        for statement in q.INDEXES:
            try:
                await graph.query(statement)
            except ResponseError as exc:
                if "already indexed" not in str(exc):
                    raise
        self._ready.add(workspace)

    async def _read(
        self, workspace: str, query: str, params: dict[str, Any] | None = None
    ) -> list[list[Any]]:
        graph = self.db.select_graph(graph_name(workspace))
        try:
            return (await graph.ro_query(cypher_params(params or {}) + query)).result_set
        except ResponseError as exc:
            if "empty key" in str(exc):  # no graph yet: nothing projected
                return []
            raise

    # -- writes -------------------------------------------------------------------

    async def apply(self, workspace: str, changes: RunStatusChanges, *, expected: int) -> bool:
        """Write a batch's changes and advance the checkpoint from ``expected`` to its position.

        Returns False, having changed nothing, when the stored checkpoint is not
        ``expected`` (another writer moved it): reload it and read on from there.
        """
        await self._ensure_schema(workspace)
        graph = self.db.select_graph(graph_name(workspace))
        params: dict[str, Any] = {
            "projection": PROJECTION,
            "expected": expected,
            "position": changes.position,
        }
        if changes.has_rows:
            params |= q.write_params(changes)
        result = await graph.query(
            cypher_params(params) + (q.WRITE if changes.has_rows else q.ADVANCE)
        )
        return bool(result.result_set)

    async def drop(self, workspace: str) -> None:
        """Delete every view and the checkpoint, in one query, ready for a rebuild."""
        await self._ensure_schema(workspace)
        graph = self.db.select_graph(graph_name(workspace))
        await graph.query(cypher_params({"projection": PROJECTION}) + q.DROP)

    # -- reads: checkpoint --------------------------------------------------------

    async def checkpoint(self, workspace: str, projection: str = PROJECTION) -> int:
        """The last log position the projection has applied, 0 before the first batch."""
        rows = await self._read(workspace, q.CHECKPOINT, {"projection": projection})
        return int(rows[0][0]) if rows else 0

    async def wait_for(
        self, workspace: str, position: int, timeout_s: float, projection: str = PROJECTION
    ) -> bool:
        """Wait until the view has applied ``position``; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while await self.checkpoint(workspace, projection) < position:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.01)
        return True

    # -- reads: runs --------------------------------------------------------------

    async def get_run(self, workspace: str, run_id: str) -> dict[str, Any] | None:
        """One run with its ``stages`` in pipeline order, or None if the view has no such run."""
        rows = await self._read(workspace, q.GET_RUN, {"id": run_id})
        if not rows:
            return None
        run = _run_dict(rows[0][0])
        stages = sorted(rows[0][1], key=lambda s: (s.get("index") is None, s.get("index")))
        run["stages"] = [_stage_dict(s) for s in stages]
        return run

    async def stale_runs(self, workspace: str, idle_since_ms: int, limit: int = 500) -> list[str]:
        """Ids of unfinished runs with no event since ``idle_since_ms`` (epoch ms), oldest first."""
        query = (
            "MATCH (r:Run) WHERE r.status IN ['processing', 'retrying'] "
            "AND r.updated_at < $since RETURN r.id ORDER BY r.updated_at LIMIT $limit"
        )
        rows = await self._read(workspace, query, {"since": idle_since_ms, "limit": limit})
        return [str(row[0]) for row in rows]

    async def list_runs(
        self,
        workspace: str,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first, and the cursor of the next page (None on the last page)."""
        _check_limit(limit)
        params: dict[str, Any] = {"limit": limit + 1}
        where = []
        if status is not None:
            where.append("r.status = $status")
            params["status"] = status
        if pipeline is not None:
            where.append("r.pipeline = $pipeline")
            params["pipeline"] = pipeline
        if cursor is not None:
            try:
                params["before"] = int(cursor)
            except ValueError:
                raise InvalidArgument("invalid cursor", cursor=cursor) from None
            where.append("r.seq < $before")
        condition = f"WHERE {' AND '.join(where)} " if where else ""
        query = f"MATCH (r:Run) {condition}RETURN properties(r) ORDER BY r.seq DESC LIMIT $limit"
        rows = await self._read(workspace, query, params)
        runs = [_run_dict(row[0]) for row in rows[:limit]]
        more = len(rows) > limit
        return runs, (str(runs[-1]["seq"]) if more else None)

    async def stats(self, workspace: str) -> dict[str, Any]:
        """Run counts by status, their total, and per stage name the completed durations."""
        rows = await self._read(workspace, q.COUNTS)
        stored = rows[0][0] if rows else {}
        counts = {status.value: int(stored.get(status.value, 0)) for status in RunStatus}
        stages = {
            name: {"count": int(n), "p50_ms": float(p50), "p95_ms": float(p95)}
            for name, n, p50, p95 in await self._read(workspace, q.DURATIONS)
        }
        return {"counts": counts, "total": sum(counts.values()), "stages": stages}

    # -- reads: dead letters and entities -----------------------------------------

    async def list_dead_letters(
        self,
        workspace: str,
        *,
        stage: str | None = None,
        status: str | None = "open",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Dead letters newest first; ``status=None`` lists every status, ``stage`` filters by stage."""
        _check_limit(limit)
        params: dict[str, Any] = {"limit": limit, "stage": stage, "status": status}
        query = q.list_dead_letters(stage=stage is not None, status=status is not None)
        return [_dead_letter_dict(row[0]) for row in await self._read(workspace, query, params)]

    async def get_dead_letter(self, workspace: str, dead_letter: str) -> dict[str, Any] | None:
        """One dead letter by id, whatever its status; None if the view has no such entry."""
        rows = await self._read(workspace, q.GET_DEAD_LETTER, {"id": dead_letter})
        return _dead_letter_dict(rows[0][0]) if rows else None

    async def entities(self, workspace: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """Entities with at least one standing mention, most mentioned first, then by name."""
        _check_limit(limit)
        rows = await self._read(workspace, q.ENTITIES, {"limit": limit})
        return [_shape(row[0], _ENTITY_KEYS, ()) for row in rows]

    async def entity(self, workspace: str, entity_type: str, name: str) -> dict[str, Any] | None:
        """One entity's mention count (0 once every mention was retracted); None if never seen."""
        rows = await self._read(workspace, q.GET_ENTITY, {"key": f"{entity_type}/{name}"})
        return _shape(rows[0][0], _ENTITY_KEYS, ()) if rows else None

    # -- reads: pipeline configs ----------------------------------------------------

    async def pipelines(self, workspace: str) -> list[dict[str, Any]]:
        """The workspace's own pipeline configs (not deleted), by name, at their latest version."""
        rows = await self._read(workspace, q.PIPELINES)
        return [_shape(row[0], _PIPELINE_KEYS, ("defined_at", "updated_at")) for row in rows]
