"""The ontology reactor: follows every workspace's log and applies ``policy.react``.

Per workspace it folds the ontology stream, reads the log after its
checkpoint in batches, and appends what the rules decide to the ontology
stream with the fold's version as the expected version. A clash (an operator
wrote meanwhile, or a second reactor runs) refolds the stream and handles the
batch again: the rules append nothing for what the fold already holds. The
checkpoint (a Redis key) only saves work on a restart; it never decides
correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import redis.asyncio as aioredis
import structlog

from stageline.errors import ConcurrencyError
from stageline.events import keys
from stageline.events.envelope import NewEvent, RecordedEvent, new_event
from stageline.events.keys import GLOBAL_WORKSPACE, ONTOLOGY_STREAM
from stageline.events.store import MAX_EVENTS_PER_APPEND, EventStore
from stageline.ontology.model import Ontology, Rules
from stageline.ontology.policy import react
from stageline.projections.projector import next_delay

__all__ = ["OntologyReactor"]

log = structlog.get_logger(__name__)

REACTOR = "ontology"


class OntologyReactor:
    def __init__(
        self,
        store: EventStore,
        client: aioredis.Redis,
        rules: Rules,
        *,
        batch_size: int = 1000,
        rescan_s: float = 0.5,
        pause_s: float = 0.1,
    ) -> None:
        self.store = store
        self.client = client
        self.rules = rules
        self.batch_size = batch_size
        self.rescan_s = rescan_s
        self.pause_s = pause_s
        """How long to wait after reading a batch that did not fill: the rules are in no
        hurry, and a read costs about the same for one event as for hundreds, so a busy
        log is read a few times a second rather than once per append."""

    async def run(self, stop: asyncio.Event) -> None:
        """React in every workspace, old and new, until ``stop`` is set.

        One blocking read (``store.tail``) waits on every workspace's log at
        once: an idle reactor holds one connection, however many workspaces
        there are.
        """
        states: dict[str, Ontology] = {}
        positions: dict[str, int] = {}
        failures: dict[str, int] = {}
        retry_at: dict[str, float] = {}
        workspaces: list[str] = []
        loop = asyncio.get_running_loop()
        next_scan = 0.0

        def failed(ws: str, exc: Exception) -> None:
            failures[ws] = failures.get(ws, 0) + 1
            delay = next_delay(failures[ws])
            retry_at[ws] = loop.time() + delay
            states.pop(ws, None)
            log.warning(
                "ontology.batch_failed",
                workspace=ws,
                after=positions.get(ws),
                retry_in=delay,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=failures[ws] == 1,
            )

        while not stop.is_set():
            if loop.time() >= next_scan:
                try:
                    workspaces = [w for w in await self.store.workspaces() if w != GLOBAL_WORKSPACE]
                except Exception:
                    log.exception("ontology.workspaces_failed")
                next_scan = loop.time() + self.rescan_s
            for ws in workspaces:
                if ws not in states and retry_at.get(ws, 0) <= loop.time():
                    try:
                        states[ws] = await self._load(ws)
                        positions[ws] = await self.checkpoint(ws)
                    except Exception as exc:
                        failed(ws, exc)
            after = {ws: positions[ws] for ws in workspaces if ws in states}
            block_ms = max(int((next_scan - loop.time()) * 1000), 1)
            if not after:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), block_ms / 1000)
                continue
            try:
                batches = await self.store.tail(after, limit=self.batch_size, block_ms=block_ms)
            except Exception as exc:
                for ws in after:
                    failed(ws, exc)
                continue
            for ws, events in batches.items():
                try:
                    if await self.handle(ws, states[ws], events):
                        positions[ws] = events[-1].position
                        await self.client.set(keys.reactor_checkpoint(ws, REACTOR), positions[ws])
                    else:
                        del states[ws]  # clashed: refold and handle the batch again
                    failures.pop(ws, None)
                except Exception as exc:
                    failed(ws, exc)
            if self.pause_s > 0 and all(len(e) < self.batch_size for e in batches.values()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.pause_s)

    async def _load(self, workspace: str) -> Ontology:
        """A private fold of the stream, not shared with anyone.

        Not seeded here: a workspace whose runs never use the ontology keeps
        none, and one whose stages do was seeded by them before any event the
        rules act on (an append from a fold that missed the seed clashes and refolds).
        """
        ontology = Ontology()
        events = await self.store.read_stream(workspace, ONTOLOGY_STREAM)
        for e in events:
            ontology.apply_recorded(e)
        return ontology

    async def checkpoint(self, workspace: str) -> int:
        raw: Any = await self.client.get(keys.reactor_checkpoint(workspace, REACTOR))
        return int(raw) if raw is not None else 0

    async def handle(self, workspace: str, state: Ontology, events: list[RecordedEvent]) -> bool:
        """React to a batch; False if the ontology stream moved (refold and call again)."""
        decided: list[NewEvent] = []
        for e in events:
            for i, out in enumerate(react(state, e, self.rules)):
                # the same event handled again from the same fold gives the same ids
                event_id = uuid.uuid5(e.event_id, f"ontology/{i}")
                decided.append(
                    new_event(
                        out,
                        event_id=event_id,
                        correlation_id=e.correlation_id,
                        causation_id=str(e.event_id),
                    )
                )
        if not decided:
            return True
        expected = state.version
        for start in range(0, len(decided), MAX_EVENTS_PER_APPEND):
            chunk = decided[start : start + MAX_EVENTS_PER_APPEND]
            try:
                result = await self.store.append(workspace, ONTOLOGY_STREAM, chunk, expected)
            except ConcurrencyError:
                log.info("ontology.clash", workspace=workspace, expected=expected)
                return False
            expected = result.version
        state.version = expected
        log.debug("ontology.decided", workspace=workspace, events=len(decided))
        return True
