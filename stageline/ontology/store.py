"""The ontology's adapter to the event store: loads, seeds, writes by hand, imports, exports.

``OntologyStore`` keeps every workspace's folded ontology in memory and reads
only the stream's new events on a refresh, so a stage's ``view`` costs one
short read at most every ``refresh_s`` seconds. Writes decide from the
refreshed fold and append with its version as the expected version: two
writers can never both think they made the same change.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from stageline.errors import ConcurrencyError, Conflict, NotFound
from stageline.events import keys
from stageline.events.envelope import NO_STREAM, DomainEvent, new_event
from stageline.events.keys import GLOBAL_WORKSPACE, ONTOLOGY_STREAM
from stageline.events.store import EventStore
from stageline.ontology.events import (
    EntityTypeAdded,
    OntologyImported,
    PatternAdded,
    PatternRemoved,
)
from stageline.ontology.model import (
    REMOVED_BY_HAND,
    Ontology,
    View,
    check_confidence,
    check_document,
    check_pattern_name,
    check_type_name,
    pattern_id,
)
from stageline.ontology.seed import SEED_NAMESPACE, seed_events

__all__ = ["OntologyStore", "OntologyWrite"]

log = structlog.get_logger(__name__)

_ATTEMPTS = 5
_PAGE = 5000


class OntologyWrite(msgspec.Struct, frozen=True):
    """The outcome of a write: the workspace it went to and where to read it at."""

    workspace: str
    position: int
    pattern_id: str | None = None


class OntologyStore:
    """Every workspace's ontology, folded from its stream and kept up to date on demand."""

    def __init__(
        self,
        store: EventStore,
        *,
        refresh_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._folds: dict[str, Ontology] = {}
        self._view_at: dict[str, float] = {}
        self._views: dict[str, View] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- reads ----------------------------------------------------------------------

    async def current(self, workspace: str, *, seed: bool = True) -> Ontology:
        """The workspace's ontology as its stream holds it now (seeded first if it has none).

        The returned object is shared and updated in place by later calls: read
        it, do not keep it across awaits you expect to be atomic.
        """
        keys.check_workspace(workspace, internal=True)
        lock = self._locks.setdefault(workspace, asyncio.Lock())
        async with lock:
            ontology = self._folds.setdefault(workspace, Ontology())
            while True:
                events = await self.store.read_stream(
                    workspace, ONTOLOGY_STREAM, from_version=ontology.version + 1, limit=_PAGE
                )
                for e in events:
                    ontology.apply_recorded(e)
                if len(events) < _PAGE:
                    break
            if ontology.version < 0 and seed and workspace != GLOBAL_WORKSPACE:
                await self._seed(workspace)
                for e in await self.store.read_stream(workspace, ONTOLOGY_STREAM):
                    ontology.apply_recorded(e)
            return ontology

    async def view(self, workspace: str) -> View:
        """The patterns ``workspace`` matches with (its own over the global ones), at most
        ``refresh_s`` old: what ``extract`` and ``discover`` get as ``StageContext.state``."""
        held = self._views.get(workspace)
        if held is not None and self.clock() - self._view_at.get(workspace, 0) < self.refresh_s:
            return held
        own, shared = await asyncio.gather(self.current(workspace), self.current(GLOBAL_WORKSPACE))
        self._view_at[workspace] = self.clock()
        version = (own.version, shared.version)
        if held is None or held.version != version:
            held = self._views[workspace] = View.of(own, shared)
        return held

    async def export(self, workspace: str) -> dict[str, Any]:
        """The workspace's ontology as a versioned document (global patterns not included)."""
        return (await self.current(workspace)).document()

    # -- writes ---------------------------------------------------------------------

    async def _seed(self, workspace: str) -> None:
        events = [
            new_event(e, event_id=uuid.uuid5(SEED_NAMESPACE, str(i)))
            for i, e in enumerate(seed_events())
        ]
        try:
            await self.store.append(workspace, ONTOLOGY_STREAM, events, NO_STREAM)
            log.info("ontology.seeded", workspace=workspace, events=len(events))
        except ConcurrencyError:
            pass  # someone else seeded it, or wrote first: either way the stream exists

    async def add_pattern(
        self,
        workspace: str,
        name: str,
        entity_type: str,
        *,
        confidence: float = 1.0,
        is_global: bool = False,
        correlation_id: str | None = None,
    ) -> OntologyWrite:
        """Add a pattern by hand (source ``manual``), or override an existing one's confidence.

        A type the ontology lacks (or has rejected) is added as ``confirmed``: an
        operator vouches for it. ``is_global`` writes it where every workspace sees it.
        """
        check_pattern_name(name)
        check_type_name(entity_type)
        confidence = check_confidence(confidence)
        target = GLOBAL_WORKSPACE if is_global else workspace
        pid = pattern_id(name, entity_type)

        def plan(ontology: Ontology) -> list[DomainEvent]:
            events: list[DomainEvent] = []
            known = ontology.types.get(entity_type)
            if known is None or known.status == "rejected":
                events.append(EntityTypeAdded(name=entity_type, status="confirmed"))
            events.append(
                PatternAdded(
                    pattern_id=pid,
                    name=name,
                    entity_type=entity_type,
                    confidence=confidence,
                    source="manual",
                    is_global=is_global,
                )
            )
            return events

        position = await self._write(target, plan, correlation_id)
        return OntologyWrite(target, position, pid)

    async def remove_pattern(
        self,
        workspace: str,
        pid: str,
        *,
        is_global: bool = False,
        correlation_id: str | None = None,
    ) -> OntologyWrite:
        """Remove a pattern: ``NotFound`` unless it is active there.

        Removing a global pattern in a workspace (``is_global`` false) hides it
        from that workspace only; with ``is_global`` it goes for everyone.
        """
        target = GLOBAL_WORKSPACE if is_global else workspace
        shared = None if is_global else await self.current(GLOBAL_WORKSPACE)

        def plan(ontology: Ontology) -> list[DomainEvent]:
            own = ontology.patterns.get(pid)
            if own is not None and own.active:
                return [PatternRemoved(pattern_id=pid, reason=REMOVED_BY_HAND)]
            held = shared.patterns.get(pid) if shared is not None else None
            if held is not None and held.active and own is None and pid not in ontology.hidden:
                return [PatternRemoved(pattern_id=pid, reason=REMOVED_BY_HAND)]
            where = "the global patterns" if is_global else f"workspace {workspace!r}"
            raise NotFound(f"no pattern {pid!r} in {where}", pattern_id=pid)

        position = await self._write(target, plan, correlation_id)
        return OntologyWrite(target, position, pid)

    async def import_document(
        self, workspace: str, raw: Any, *, correlation_id: str | None = None
    ) -> OntologyWrite:
        """Replace the workspace's ontology with document ``raw``, whole, in one event.

        ``InvalidArgument`` (nothing appended) if any part of it is invalid.
        """
        document = check_document(raw)
        event = OntologyImported(document=msgspec.to_builtins(document))
        position = await self._write(workspace, lambda _: [event], correlation_id, seed=False)
        return OntologyWrite(workspace, position)

    async def _write(
        self,
        workspace: str,
        plan: Callable[[Ontology], list[DomainEvent]],
        correlation_id: str | None,
        *,
        seed: bool = True,
    ) -> int:
        keys.check_workspace(workspace, internal=True)
        for _ in range(_ATTEMPTS):
            ontology = await self.current(workspace, seed=seed)
            events = [new_event(e, correlation_id=correlation_id) for e in plan(ontology)]
            try:
                result = await self.store.append(
                    workspace, ONTOLOGY_STREAM, events, ontology.version
                )
            except ConcurrencyError:
                continue  # someone wrote first: fold what they wrote and plan again
            return result.position
        raise Conflict(
            "the ontology kept changing under this write; try again", workspace=workspace
        )
