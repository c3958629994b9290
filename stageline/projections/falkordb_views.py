"""The FalkorDB adapter of the read models: one graph per workspace.

Run status lives as ``(:Run)-[:HAS_STAGE]->(:Stage)`` nodes, a ``(:Counts
{name: 'runs'})`` node with one property per run status, and a
``(:Checkpoint {projection: 'run_status'})`` node holding the last log
position applied. A batch of changes and its checkpoint are written by one
query, guarded by the checkpoint the writer expects: FalkorDB runs a graph's
write queries one at a time, so a batch is applied exactly once or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from falkordb.asyncio import FalkorDB
from falkordb.helpers import stringify_param_value
from redis.exceptions import ResponseError

from stageline.errors import InvalidArgument
from stageline.events.keys import graph_name
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatus,
    RunStatusChanges,
)

__all__ = ["PROJECTION", "FalkorDBViews", "connect", "cypher_params"]

PROJECTION = "run_status"

_INDEXES = [
    f"CREATE INDEX FOR (n:{label}) ON (n.{prop})"
    for label, prop in (
        ("Run", "id"), ("Run", "status"), ("Run", "seq"),
        ("Stage", "key"), ("Stage", "run_id"), ("Checkpoint", "projection"),
    )
]  # fmt: skip

# Rows are positional lists, not maps: a third of the bytes to send and parse, and
# plain JSON is then valid Cypher. A run row is [id, *RUN_FIELDS]; a new run's row
# adds [created values, stage rows]. A stage row is [key, run_id, name, attempts,
# created values or null, *STAGE_FIELDS]. A field is [value] when the batch set it
# (null value: remove the property) and null when the batch left it alone.
_R, _S = 1, 5  # where the fields start in run and stage rows
_NEW = _R + len(RUN_FIELDS)  # a new run's created values, then its stages


def _assign(var: str, row: str, fields: Iterable[str], first: int) -> str:
    return ", ".join(
        f"{var}.{f} = CASE WHEN {row}[{i}] IS NULL THEN {var}.{f} ELSE {row}[{i}][0] END"
        for i, f in enumerate(fields, first)
    )


def _stage_merge() -> str:
    created = "".join(f", s.{f} = st[4][{i}]" for i, f in enumerate(STAGE_CREATED))
    return (
        "MERGE (r)-[:HAS_STAGE]->(s:Stage {key: st[0]})"
        f" ON CREATE SET s.run_id = st[1], s.name = st[2], s.attempts = 0{created}"
        f" SET s.attempts = s.attempts + st[3], {_assign('s', 'st', STAGE_FIELDS, _S)}"
    )


def _stage_create() -> str:
    # FalkorDB: a SET right after CREATE does not see the new node's properties
    # (CREATE (n) SET n.x = 0 SET n.x = n.x + 1 leaves x null), so every value
    # is computed from the row alone
    props = {"key": "st[0]", "run_id": "st[1]", "name": "st[2]", "attempts": "st[3]"}
    props |= {f: f"st[4][{i}]" for i, f in enumerate(STAGE_CREATED)}
    for i, f in enumerate(STAGE_FIELDS, _S):
        default = props.get(f, "null")
        props[f] = f"CASE WHEN st[{i}] IS NULL THEN {default} ELSE st[{i}][0] END"
    body = ", ".join(f"{k}: {v}" for k, v in props.items())
    return f"CREATE (r)-[:HAS_STAGE]->(:Stage {{{body}}})"


# The MERGE creates a missing checkpoint at 0; a stored position other than
# $expected leaves no row, so nothing after it runs and the query returns nothing.
_GUARD = """MERGE (c:Checkpoint {projection: $projection})
ON CREATE SET c.position = 0
WITH c WHERE c.position = $expected
SET c.position = $position
WITH c
"""
# Each UNWIND sits in its own CALL {} so that an empty list cannot end the query.
# A run is created only by the batch holding its RunSubmitted: its seq is that
# event's position, which is how a repeated RunSubmitted is told from the first.
# Stages of a new run are CREATEd (MERGE costs twice as much), others MERGEd.
_WRITE = f"""{_GUARD}CALL {{
  UNWIND $new_runs AS row
  MERGE (r:Run {{id: row[0]}})
  ON CREATE SET {", ".join(f"r.{f} = row[{_NEW}][{i}]" for i, f in enumerate(RUN_CREATED))}
  SET {_assign("r", "row", RUN_FIELDS, _R)}
  WITH r, row, r.seq = row[{_NEW}][{RUN_CREATED.index("seq")}] AS fresh
  UNWIND row[{_NEW + 1}] AS st
  FOREACH (_ IN CASE WHEN fresh THEN [1] ELSE [] END | {_stage_create()})
  FOREACH (_ IN CASE WHEN fresh THEN [] ELSE [1] END | {_stage_merge()})
}}
CALL {{
  UNWIND $runs AS row
  MATCH (r:Run {{id: row[0]}})
  SET {_assign("r", "row", RUN_FIELDS, _R)}
}}
CALL {{
  UNWIND $stages AS st
  MATCH (r:Run {{id: st[1]}})
  {_stage_merge()}
}}
MERGE (n:Counts {{name: 'runs'}})
SET {", ".join(f"n.{s} = coalesce(n.{s}, 0) + $counts[{i}]" for i, s in enumerate(RunStatus))}
RETURN c.position"""
_ADVANCE = _GUARD + "RETURN c.position"
_DROP = """CALL { MATCH (c:Checkpoint {projection: $projection}) DELETE c }
CALL { MATCH (s:Stage) DETACH DELETE s }
CALL { MATCH (r:Run) DETACH DELETE r }
CALL { MATCH (n:Counts {name: 'runs'}) DELETE n }
RETURN 1"""
_CHECKPOINT = "MATCH (c:Checkpoint {projection: $projection}) RETURN c.position"
_GET_RUN = """MATCH (r:Run {id: $id})
OPTIONAL MATCH (r)-[:HAS_STAGE]->(s:Stage)
RETURN properties(r), collect(properties(s))"""
_COUNTS = "MATCH (n:Counts {name: 'runs'}) RETURN properties(n)"
_DURATIONS = """MATCH (s:Stage) WHERE s.status = 'completed'
RETURN s.name, count(s), percentileCont(s.duration_ms, 0.5), percentileCont(s.duration_ms, 0.95)
ORDER BY s.name"""


def _rows(changes: RunStatusChanges) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """The new runs (with their stages), the other runs and the other stages, as rows."""
    new_runs: list[list[Any]] = []
    runs: list[list[Any]] = []
    stages: list[list[Any]] = []
    nested: dict[str, list[list[Any]]] = {}
    for run in changes.runs.values():
        f = run.fields
        row: list[Any] = [run.run_id, *[[f[k]] if k in f else None for k in RUN_FIELDS]]
        if run.created is None:
            runs.append(row)
        else:
            nested[run.run_id] = []
            new_runs.append([*row, [run.created.get(k) for k in RUN_CREATED], nested[run.run_id]])
    for stage in changes.stages.values():
        f, c = stage.fields, stage.created
        stage_row = [
            stage.key,
            stage.run_id,
            stage.name,
            stage.attempts,
            None if c is None else [c.get(k) for k in STAGE_CREATED],
            *[[f[k]] if k in f else None for k in STAGE_FIELDS],
        ]
        nested.get(stage.run_id, stages).append(stage_row)
    return new_runs, runs, stages


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
    """A FalkorDB client for the store's URL: ``unix:///path.sock`` or ``redis://host:port/0``."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    password = password or parse_qs(parts.query).get("password", [None])[0]
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        return FalkorDB(unix_socket_path=parts.path, username=username, password=password)
    if parts.scheme in ("redis", "rediss"):
        # the client always selects database 0: a URL naming another would split the store
        if parts.path.strip("/") not in ("", "0"):
            raise InvalidArgument("FalkorDB views live in database 0", url=url)
        return FalkorDB(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            username=username,
            password=password,
            ssl=parts.scheme == "rediss",
        )
    raise InvalidArgument("store URL must be unix://, redis:// or rediss://", url=url)


_RUN_KEYS = tuple(dict.fromkeys(("id", *RUN_CREATED, *RUN_FIELDS)))
_STAGE_KEYS = tuple(dict.fromkeys(("name", "attempts", *STAGE_CREATED, *STAGE_FIELDS)))


def _iso(ms: float | None) -> str | None:
    if ms is None:
        return None
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _run_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: props.get(name) for name in _RUN_KEYS}
    for name in ("submitted_at", "updated_at", "completed_at"):
        out[name] = _iso(out[name])
    return out


def _stage_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: props.get(name) for name in _STAGE_KEYS}
    out["started_at"] = _iso(out["started_at"])
    out["ended_at"] = _iso(out["ended_at"])
    if out["metadata"] is not None:
        out["metadata"] = msgspec.json.decode(out["metadata"])
    return out


class FalkorDBViews:
    """Writes and reads every workspace's run-status view in FalkorDB."""

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
        for statement in _INDEXES:
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
            params["new_runs"], params["runs"], params["stages"] = _rows(changes)
            params["counts"] = [changes.counts.get(status, 0) for status in RunStatus]
        result = await graph.query(
            cypher_params(params) + (_WRITE if changes.has_rows else _ADVANCE)
        )
        return bool(result.result_set)

    async def drop(self, workspace: str) -> None:
        """Delete the run-status view and its checkpoint, in one query, ready for a rebuild."""
        await self._ensure_schema(workspace)
        graph = self.db.select_graph(graph_name(workspace))
        await graph.query(cypher_params({"projection": PROJECTION}) + _DROP)

    # -- reads --------------------------------------------------------------------

    async def checkpoint(self, workspace: str, projection: str = PROJECTION) -> int:
        """The last log position the projection has applied, 0 before the first batch."""
        rows = await self._read(workspace, _CHECKPOINT, {"projection": projection})
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

    async def get_run(self, workspace: str, run_id: str) -> dict[str, Any] | None:
        """One run with its ``stages`` in pipeline order, or None if the view has no such run."""
        rows = await self._read(workspace, _GET_RUN, {"id": run_id})
        if not rows:
            return None
        run = _run_dict(rows[0][0])
        stages = sorted(rows[0][1], key=lambda s: (s.get("index") is None, s.get("index")))
        run["stages"] = [_stage_dict(s) for s in stages]
        return run

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
        if limit < 1:
            raise InvalidArgument("limit must be >= 1", limit=limit)
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
        rows = await self._read(workspace, _COUNTS)
        stored = rows[0][0] if rows else {}
        counts = {status.value: int(stored.get(status.value, 0)) for status in RunStatus}
        stages = {
            name: {"count": int(n), "p50_ms": float(p50), "p95_ms": float(p95)}
            for name, n, p50, p95 in await self._read(workspace, _DURATIONS)
        }
        return {"counts": counts, "total": sum(counts.values()), "stages": stages}
