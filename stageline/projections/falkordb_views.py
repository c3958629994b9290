"""The FalkorDB adapter of the read models: one graph per workspace.

Each projection (``registry.PROJECTIONS``) keeps its own nodes and its own
``(:Checkpoint {projection: <name>})`` node holding the last log position it
applied: run status as ``(:Run)`` nodes that hold their stages too (``stages``,
``stage_attempts``, ``stage.<name>.<field>``), a ``(:Counts {name: 'runs'})``
node and ``(:DeadLetter)`` nodes (``run_status``); entity mentions as
``(:Entity)`` nodes (``entities``); pipeline configs as ``(:PipelineConfig)``
nodes (``pipelines``). A batch of a projection's changes
and its checkpoint are written by one query, guarded by the checkpoint the
writer expects: FalkorDB runs a graph's write queries one at a time, so a
batch is applied exactly once or not at all. The writes of several
projections go out together, in one round trip, and the checkpoints of those
with nothing to write move together, in one query (still each guarded).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from falkordb.asyncio import FalkorDB
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.errors import InvalidArgument, ViewOfNewerVersion
from stageline.events.keys import graph_name
from stageline.events.pool import WaitingPool
from stageline.events.redis_store import (
    CONNECT_TIMEOUT_SECONDS,
    SOCKET_TIMEOUT_SECONDS,
    retry_policy,
)
from stageline.ontology.events import PATTERN_SOURCES, TYPE_STATUSES
from stageline.projections import _cypher, compact, durations
from stageline.projections import ontology as ontology_status
from stageline.projections._cypher import entities as qe
from stageline.projections._cypher import ontology as qo
from stageline.projections._cypher import patterns as qpt
from stageline.projections._cypher import pipelines as qp
from stageline.projections._cypher import run_status as qr
from stageline.projections.changes import Changes
from stageline.projections.cursors import Key, decode, encode
from stageline.projections.cypher_params import cypher_params
from stageline.projections.dead_letters import DEAD_LETTER_CREATED, DEAD_LETTER_FIELDS
from stageline.projections.notices import Notices
from stageline.projections.pipeline_configs import PIPELINE_FIELDS
from stageline.projections.projection import Projection, Write
from stageline.projections.registry import NAMES, RUN_STATUS
from stageline.projections.rows import STAGE_KEYS, run_row, run_with_stages, shape
from stageline.projections.run_status import RunStatus

__all__ = ["READ_TIMEOUT_SECONDS", "FalkorDBViews", "connect"]

log = structlog.get_logger("stageline.projections")


READ_TIMEOUT_SECONDS = SOCKET_TIMEOUT_SECONDS
"""Longest a read of the views waits for its answer, as the store's client waits for any:
a server that takes a query and does not answer (stopped, hung) makes it fail (a 503 in
the API), not hang. Writes are not bounded so: a rebuild's batch, or dropping a large
view, may take longer, and a client-side timeout would only have them sent again."""


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
    db.connection.connection_pool = WaitingPool.replacing(db.connection.connection_pool)
    return db


_STAGE_FIELDS = tuple(k for k in STAGE_KEYS if k not in ("name", "attempts"))
_DEAD_LETTER_KEYS = tuple(
    k for k in ("id", *DEAD_LETTER_CREATED, "deliveries", *DEAD_LETTER_FIELDS) if k != "seq"
)
_ENTITY_KEYS = ("key", "name", "type", "mentions")
_PIPELINE_KEYS = ("name", *(f for f in PIPELINE_FIELDS if f != "deleted"))
_PATTERN_KEYS = (
    "id",
    "name",
    "entity_type",
    "source",
    "confidence",
    "is_global",
    "active",
    "removed_reason",
    "matches",
    "runs_matched",
    "first_seen",
    "last_seen",
)


def _stages(props: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A run's stored stages, from its node's properties."""
    return [
        {f: props.get(p) for f, p in _stage_properties(name)} | {"name": name, "attempts": attempts}
        for name, attempts in zip(
            props.get("stages", ()), props.get("stage_attempts", ()), strict=True
        )
    ]


@functools.lru_cache(maxsize=1024)
def _stage_properties(stage: str) -> tuple[tuple[str, str], ...]:
    """Each stored field of a stage with the run's property that holds it."""
    return tuple((f, qr.stage_property(stage, f)) for f in _STAGE_FIELDS)


def _dead_letter_dict(props: Mapping[str, Any]) -> dict[str, Any]:
    return shape(props, _DEAD_LETTER_KEYS, ("created_at", "closed_at"))


def _counts(stored: Mapping[str, Any] | None) -> dict[str, int]:
    """Every run status's count (0 for none) from a counts node's properties."""
    return {status.value: int((stored or {}).get(status.value, 0)) for status in RunStatus}


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidArgument("limit must be >= 1", limit=limit)


class FalkorDBViews:
    """Writes every projection's changes to a workspace's graph, and reads the views back."""

    def __init__(self, db: FalkorDB) -> None:
        self.db = db
        self._ready: set[tuple[str, str]] = set()
        self._checked: set[tuple[str, str]] = set()
        """(workspace, projection) pairs checked for a view in an outdated shape."""
        self.notices = Notices(db.connection, self.checkpoint)
        """The checkpoint notices: ``apply_all`` and ``drop`` publish, ``wait_for`` waits on them."""

    @classmethod
    def from_url(cls, url: str) -> FalkorDBViews:
        return cls(connect(url))

    async def close(self) -> None:
        await self.notices.close()
        await self.db.connection.aclose()

    async def _query(self, verb: str, workspace: str, query: str) -> list[list[Any]]:
        """``verb`` (``GRAPH.QUERY``, ``GRAPH.RO_QUERY``) on the workspace's graph: its rows."""
        command = (verb, graph_name(workspace), query, "--compact")
        return compact.rows(await self.db.connection.execute_command(*command))

    async def _write(self, workspace: str, query: str) -> None:
        """Run one write query on the workspace's graph (a schema statement, a drop)."""
        await self._query("GRAPH.QUERY", workspace, query)

    async def _ensure_schema(self, workspace: str, projections: Iterable[Projection[Any]]) -> None:
        missing = [p for p in projections if (workspace, p.name) not in self._ready]
        if not missing:
            return
        await self.drop_outdated(workspace, missing)
        for statement in dict.fromkeys(
            [_cypher.CHECKPOINT_INDEX, *(i for p in missing for i in p.writer.indexes)]
        ):
            try:
                await self._write(workspace, statement)
            except ResponseError as exc:
                if "already indexed" not in str(exc):
                    raise
        self._ready.update((workspace, p.name) for p in missing)

    async def drop_outdated(self, workspace: str, projections: Iterable[Projection[Any]]) -> None:
        """Drop each view an older stageline wrote in another shape (its checkpoint's
        ``shape`` is below the writer's): its checkpoint then reads 0, and the projector
        rebuilds it from the log. ``ViewOfNewerVersion`` for a view a newer stageline
        wrote, which this one leaves as it is. Writers only (the projector as it loads its
        checkpoints, and before a write), once per process and view, and again after a
        write to the view was refused: a reader reads what the view holds until then."""
        for p in projections:
            if (workspace, p.name) in self._checked:
                continue
            own = p.writer.shape
            rows = await self._read(workspace, _cypher.STORED_SHAPE, {"projection": p.name})
            if rows and rows[0][0] > own:
                raise ViewOfNewerVersion(workspace, p.name, shape=rows[0][0], own=own)
            if rows and rows[0][0] < own:
                log.warning("views.outdated_dropped", workspace=workspace, projection=p.name)
                drop = cypher_params({"projection": p.name}) + p.writer.drop_older
                await self._write(workspace, drop)
            self._checked.add((workspace, p.name))

    async def _read(
        self, workspace: str, query: str, params: dict[str, Any] | None = None
    ) -> list[list[Any]]:
        query = cypher_params(params or {}) + query
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                return await self._query("GRAPH.RO_QUERY", workspace, query)
        except TimeoutError:  # redis-py closed the connection on the cancellation
            raise RedisTimeoutError(
                f"the views did not answer a read within {READ_TIMEOUT_SECONDS:g}s"
            ) from None
        except ResponseError as exc:
            if "empty key" in str(exc):  # no graph yet: nothing projected
                return []
            raise

    # -- writes -------------------------------------------------------------------

    async def apply(
        self, workspace: str, projection: Projection[Any], changes: Changes, *, expected: int
    ) -> bool:
        """Write a projection's changes and move its checkpoint from ``expected`` to their position.

        Returns False, having changed nothing, when the stored checkpoint is not
        ``expected`` (another writer moved it): reload it and read on from there.
        """
        return (await self.apply_all(workspace, [Write(projection, changes, expected)]))[0]

    async def apply_all(self, workspace: str, writes: Sequence[Write]) -> list[bool]:
        """Send several projections' writes in one round trip; whether each one applied.

        Their checkpoints are published (``notices``) in the same round trip.

        Each is guarded on its own and applied or refused on its own, as
        ``apply`` describes. If any raises, the error is raised once every
        write has answered: the others may have applied, so reload every
        checkpoint.
        """
        if not writes:
            return []
        await self._ensure_schema(workspace, (w.projection for w in writes))
        graph = graph_name(workspace)
        # checkpoints that only move (nothing to write, from a checkpoint that exists)
        # move in one query: each projection's row is still guarded on its own
        moves = [i for i, w in enumerate(writes) if w.expected and not w.changes.has_rows]
        own = [i for i in range(len(writes)) if i not in moves]
        commands = [("GRAPH.QUERY", graph, writes[i].query(), "--compact") for i in own]
        if moves:
            moving = [writes[i] for i in moves]
            rows = [
                [w.projection.name, w.expected, w.changes.position, w.projection.writer.shape]
                for w in moving
            ]
            query = cypher_params({"advances": rows}) + _cypher.ADVANCE_ALL
            commands.append(("GRAPH.QUERY", graph, query, "--compact"))
        # the notice goes in the same round trip: Redis runs it once the writes answered
        pipe = self.db.connection.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute_command(
            *self.notices.command(
                workspace, {w.projection.name: w.changes.position for w in writes}
            )
        )
        replies = await pipe.execute(raise_on_error=False)
        notice = replies.pop()
        if isinstance(notice, Exception):  # say, an ACL without the channels
            self.notices.refused(notice)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        # a compact reply is [header, rows, statistics]; a guarded query returns a row
        # for each write the guard let through
        applied = [False] * len(writes)
        for i, reply in zip(own, replies, strict=False):
            applied[i] = bool(reply[1])
        if moves:
            moved = {row[0][1] for row in replies[-1][1]}  # a cell is [type, value]
            for i in moves:
                applied[i] = writes[i].projection.name in moved
        for write, ok in zip(writes, applied, strict=True):
            if not ok:  # another writer moved the checkpoint: maybe another version
                self._checked.discard((workspace, write.projection.name))
        return applied

    async def drop(self, workspace: str, projection: Projection[Any]) -> None:
        """Delete the projection's nodes and its checkpoint, in one query, ready for a rebuild.

        Other projections' nodes and checkpoints stay as they are. A view a newer
        stageline wrote is dropped too: a rebuild is how a version takes a view back.
        """
        self._checked.add((workspace, projection.name))  # whatever its shape: it goes
        await self._ensure_schema(workspace, [projection])
        drop = cypher_params({"projection": projection.name}) + projection.writer.drop
        await self._write(workspace, drop)
        await self.notices.publish(workspace, {projection.name: 0})

    # -- reads: checkpoints -------------------------------------------------------

    async def checkpoint(self, workspace: str, projection: str = RUN_STATUS.name) -> int:
        """The last log position the projection has applied, 0 before its first batch."""
        return (await self.checkpoints(workspace, (projection,))).get(projection, 0)

    async def checkpoints(self, workspace: str, names: Iterable[str] = NAMES) -> dict[str, int]:
        """The stored checkpoints of the projections ``names``, by name, in one query.

        A projection that has written nothing yet is missing (its checkpoint is 0).
        """
        names = list(names)
        rows = await self._read(workspace, _cypher.CHECKPOINTS, {"names": names})
        return {str(name): int(position) for name, position in rows}

    async def wait_for(
        self, workspace: str, position: int, timeout_s: float, projection: str = RUN_STATUS.name
    ) -> bool:
        """Wait until the projection has applied ``position``; False if ``timeout_s`` passed first.

        Woken by the writer's notices (``notices``); it polls the view only until it
        hears them (or for good, if the server refuses their channel).
        """
        return await self.notices.wait_for(workspace, projection, position, timeout_s)

    # -- reads: runs --------------------------------------------------------------

    async def get_run(self, workspace: str, run_id: str) -> dict[str, Any] | None:
        """One run with its ``stages`` in pipeline order, or None if the view has no such run."""
        rows = await self._read(workspace, qr.GET_RUN, {"id": run_id})
        if not rows:
            return None
        return run_with_stages(rows[0][0], _stages(rows[0][0]))

    async def stale_runs(
        self,
        workspace: str,
        idle_since_ms: int,
        limit: int = 500,
        after: tuple[str, int] | None = None,
    ) -> list[tuple[str, int]]:
        """Unfinished runs with no event since ``idle_since_ms`` (epoch ms): their ids and
        ``updated_at``, oldest first (then by id), from just after ``after`` (a run of an
        earlier page, as returned)."""
        run_id, at = after or ("", -(2**62))
        params = {"since": idle_since_ms, "limit": limit, "at": at, "id": run_id}
        rows = await self._read(workspace, qr.STALE_RUNS, params)
        return [(str(row[0]), int(row[1])) for row in rows]

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
        rows = await self._read(workspace, qr.list_runs(where), params)
        runs = [run_row(row[0]) for row in rows[:limit]]
        more = len(rows) > limit
        return runs, (str(runs[-1]["seq"]) if more else None)

    async def run_counts(self, workspace: str) -> dict[str, int]:
        """Runs by status (every status, 0 for none): one node's read, however many runs."""
        rows = await self._read(workspace, qr.COUNTS)
        return _counts(rows[0][0] if rows else None)

    async def stats(self, workspace: str, pipeline: str | None = None) -> dict[str, Any]:
        """Run counts by status, their total, and per stage name its completed durations'
        count, p50 and p95 (``durations.py``: within 2%); of ``pipeline``'s runs only if
        given (stages of other pipelines may share names). One read of a node per pipeline
        and stage, however many runs."""
        params = None if pipeline is None else {"pipeline": pipeline}
        rows = await self._read(workspace, qr.stats(pipeline=params is not None), params)
        stored, histograms = rows[0] if rows else (None, [])
        by_stage: dict[str, list[tuple[list[int], list[int]]]] = {}
        for name, buckets, sums in histograms:
            if name is not None:  # the null row of no histogram at all
                by_stage.setdefault(name, []).append((buckets, sums))
        stages = {}
        for name in sorted(by_stage):
            histogram = durations.merge(by_stage[name])
            if n := sum(histogram.counts):
                stages[name] = {
                    "count": n,
                    "p50_ms": durations.percentile(histogram, 0.5),
                    "p95_ms": durations.percentile(histogram, 0.95),
                }
        counts = _counts(stored)
        return {"counts": counts, "total": sum(counts.values()), "stages": stages}

    # -- reads: dead letters and entities -----------------------------------------

    async def list_dead_letters(
        self,
        workspace: str,
        *,
        stage: str | None = None,
        status: str | None = "open",
        actor: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Dead letters newest first, and the cursor of the next page (None on the last page);
        ``status=None`` lists every status, ``stage`` filters by stage, ``actor`` keeps the
        poison entries of that actor's channel (``@ingest``: the ingest channel's)."""
        _check_limit(limit)
        params: dict[str, Any] = {
            "limit": limit + 1,
            "stage": stage,
            "status": status,
            "actor": actor,
        }
        if cursor is not None:
            try:
                params["before"] = int(cursor)
            except ValueError:
                raise InvalidArgument("invalid cursor", cursor=cursor) from None
        query = qr.list_dead_letters(
            stage=stage is not None,
            status=status is not None,
            actor=actor is not None,
            before=cursor is not None,
        )
        rows = [row[0] for row in await self._read(workspace, query, params)]
        more = len(rows) > limit
        page = rows[:limit]
        return [_dead_letter_dict(props) for props in page], (
            str(page[-1]["seq"]) if more else None
        )

    async def open_dead_letters(self, workspace: str) -> dict[str, int]:
        """How many dead letters wait for a decision, by stage."""
        return {stage: int(n) for stage, n in await self._read(workspace, qr.OPEN_DEAD_LETTERS)}

    async def get_dead_letter(self, workspace: str, dead_letter: str) -> dict[str, Any] | None:
        """One dead letter by id, whatever its status; None if the view has no such entry."""
        rows = await self._read(workspace, qr.GET_DEAD_LETTER, {"id": dead_letter})
        return _dead_letter_dict(rows[0][0]) if rows else None

    async def list_entities(
        self, workspace: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entities with at least one standing mention, most mentioned first, then by name
        (then by type), and the cursor of the next page (None on the last page)."""
        _check_limit(limit)
        params: dict[str, Any] = {"limit": limit + 1}
        if cursor is not None:
            params["mentions"], params["name"], params["type"] = decode(cursor)
        query = qe.list_entities(after=cursor is not None)
        rows = await self._read(workspace, query, params)
        entities = [shape(row[0], _ENTITY_KEYS, ()) for row in rows[:limit]]
        if len(rows) <= limit:
            return entities, None
        last = entities[-1]
        return entities, encode((last["mentions"], last["name"], last["type"]))

    async def entities(self, workspace: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The first ``limit`` entities of ``list_entities``."""
        entities, _ = await self.list_entities(workspace, limit=limit)
        return entities

    async def entity(self, workspace: str, entity_type: str, name: str) -> dict[str, Any] | None:
        """One entity's mention count (0 once every mention was retracted); None if never seen."""
        rows = await self._read(workspace, qe.GET_ENTITY, {"key": f"{entity_type}/{name}"})
        return shape(rows[0][0], _ENTITY_KEYS, ()) if rows else None

    # -- reads: pipeline configs ----------------------------------------------------

    async def pipelines(self, workspace: str) -> list[dict[str, Any]]:
        """The workspace's own pipeline configs (not deleted), by name, at their latest version."""
        rows = await self._read(workspace, qp.PIPELINES)
        return [shape(row[0], _PIPELINE_KEYS, ("defined_at", "updated_at")) for row in rows]

    # -- reads: patterns and the ontology's convergence ---------------------------------

    async def patterns(
        self,
        workspace: str,
        *,
        source: str | None = None,
        entity_type: str | None = None,
        include_removed: bool = False,
        is_global: bool | None = None,
        after: Key | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
        """The workspace's pattern nodes (global patterns matched here too, marked
        ``is_global``), most matched first, then by name, then by id; active ones unless
        ``include_removed``; only those whose ``is_global`` is ``is_global`` if given; those
        after the key ``after`` if given; at most ``limit`` (None: every one)."""
        if limit is not None:
            _check_limit(limit)
        query = qpt.list_patterns(
            source=source is not None,
            entity_type=entity_type is not None,
            include_removed=include_removed,
            is_global=is_global,
            after=after is not None,
            limit=limit is not None,
        )
        params: dict[str, Any] = {"limit": limit, "source": source, "entity_type": entity_type}
        if limit is None:
            del params["limit"]
        if after is not None:
            params["matches"], params["name"], params["id"] = after
        rows = await self._read(workspace, query, params)
        out = []
        for row in rows:
            pattern = shape(row[0], _PATTERN_KEYS, ("first_seen", "last_seen"))
            pattern["is_global"] = bool(pattern["is_global"])
            out.append(pattern)
        return out

    async def pattern_counts(self, workspace: str) -> dict[str, int]:
        """The workspace's own active patterns by source (every source, 0s included)."""
        counts = dict.fromkeys(PATTERN_SOURCES, 0)
        for source, n in await self._read(workspace, qpt.PATTERN_COUNTS):
            if source in counts:
                counts[source] = int(n)
        return counts

    async def ontology_status(self, workspace: str, *, bucket_runs: int = 100) -> dict[str, Any]:
        """How far the ontology has converged (``ontology.status``): patterns by source, types
        by status, totals, rates and the discovery curve in buckets of ``bucket_runs`` runs."""
        if bucket_runs < ontology_status.BUCKET_RUNS or bucket_runs % ontology_status.BUCKET_RUNS:
            raise InvalidArgument(
                f"bucket_runs must be a multiple of {ontology_status.BUCKET_RUNS}",
                bucket_runs=bucket_runs,
            )
        pattern_stats, type_rows, counter_rows, buckets = await asyncio.gather(
            self.pattern_counts(workspace),
            self._read(workspace, qo.TYPE_COUNTS),
            self._read(workspace, qo.COUNTERS_NODE),
            self._read(workspace, qo.BUCKETS),
        )
        type_counts = dict.fromkeys(TYPE_STATUSES, 0)
        for status, n in type_rows:
            if status in type_counts:
                type_counts[status] = int(n)
        counters = counter_rows[0][0] if counter_rows else {}
        return ontology_status.status(
            pattern_stats,
            type_counts,
            counters,
            [(b, p, t) for b, p, t in buckets],
            bucket_runs=bucket_runs,
        )
