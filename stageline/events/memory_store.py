"""An in-memory ``EventStore``: same contract as the Redis store, for tests and embedding."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

from stageline.errors import ConcurrencyError, PartialRetry
from stageline.events import codec
from stageline.events.envelope import ANY, NO_STREAM, NewEvent, RecordedEvent
from stageline.events.store import (
    AppendRequest,
    AppendResult,
    check_append,
    check_repeat,
    epoch_ms,
)


class _Workspace:
    def __init__(self) -> None:
        self.log: list[RecordedEvent] = []
        self.streams: dict[str, list[int]] = {}  # stream -> positions by version
        self.ids: dict[tuple[str, bytes], int] = {}  # (stream, event id) -> version
        self.held: dict[str, int] = {}  # stream -> the length it is held at


class MemoryEventStore:
    """Keeps every workspace's log in process memory; lost when the process ends."""

    def __init__(self) -> None:
        self._ws: dict[str, _Workspace] = {}
        self._changed = asyncio.Condition()
        self._announced: set[str] | None = None
        """Workspaces with events ``tail`` need not announce (None: not read yet)."""

    def _listed(self) -> set[str]:
        return {name for name, ws in self._ws.items() if ws.log}

    def _get(self, workspace: str) -> _Workspace:
        ws = self._ws.get(workspace)
        if ws is None:
            ws = self._ws[workspace] = _Workspace()
        return ws

    async def append(
        self,
        workspace: str,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int = ANY,
        *,
        whole: bool = False,
    ) -> AppendResult:
        return await self._apply(
            AppendRequest(workspace, stream, events, expected_version, whole=whole)
        )

    async def _apply(self, request: AppendRequest) -> AppendResult:
        check_append(request)
        result = self._append(request)
        async with self._changed:
            self._changed.notify_all()
        return result

    def _append(self, request: AppendRequest) -> AppendResult:
        ws = self._get(request.workspace)
        stream, events = request.stream, request.events
        # encode first, as the Redis store does: a bad event must leave the log as it was
        blobs = {e.event_id: codec.encode(e) for e in events}
        positions = ws.streams.get(stream, [])
        length = len(positions)
        held = [ws.ids.get((stream, e.event_id.bytes)) for e in events]
        fresh = [e for e, version in zip(events, held, strict=True) if version is None]
        if request.whole and len(fresh) < len(events):
            repeated = [(i, v) for i, v in enumerate(held) if v is not None]
            check_repeat(request, [(i, ws.log[positions[v] - 1]) for i, v in repeated])
            if fresh:
                index, version = repeated[0]
                event_id = str(events[index].event_id)
                raise PartialRetry(stream, length - 1, index=index, event_id=event_id, at=version)
        if fresh:
            expected = request.expected_version
            if (expected == NO_STREAM and length) or (expected >= 0 and expected != length - 1):
                raise ConcurrencyError(stream, expected, length - 1)
        at = request.recorded_at
        recorded_ms = epoch_ms(datetime.now(UTC) if at is None else at)
        versions, out_positions = [], []
        for event in events:
            known = ws.ids.get((stream, event.event_id.bytes))
            if known is not None:
                versions.append(known)
                out_positions.append(ws.streams[stream][known])
                continue
            version = len(positions)
            position = len(ws.log) + 1
            # round-trip through the codec so both stores hand back identical data
            ws.log.append(
                codec.decode(
                    blobs[event.event_id],
                    workspace=request.workspace,
                    stream=stream,
                    version=version,
                    position=position,
                    recorded_ms=recorded_ms,
                )
            )
            positions.append(position)
            ws.ids[(stream, event.event_id.bytes)] = version
            versions.append(version)
            out_positions.append(position)
        ws.streams[stream] = positions
        return AppendResult(
            stream=stream,
            # a full retry answers with where its events are, as the Redis store does
            version=len(positions) - 1 if fresh else max(versions),
            versions=versions,
            positions=out_positions,
            deduplicated=not fresh,
        )

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        out: list[AppendResult | Exception] = []
        for request in requests:
            if request.outbox is not None:
                # the caller's mistake, not bad input: it must not pass for a refused event
                out.append(TypeError("the memory store takes no outbox"))
                continue
            try:
                out.append(await self._apply(request))
            except Exception as exc:
                out.append(exc)
        return out

    async def read_stream(
        self,
        workspace: str,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        ws = self._get(workspace)
        positions = ws.streams.get(stream, [])
        if backwards:
            start = (
                len(positions) - 1
                if from_version is None
                else min(from_version, len(positions) - 1)
            )
            chosen = positions[start::-1] if start >= 0 else []
        else:
            chosen = positions[max(from_version or 0, 0) :]
        if limit is not None:
            chosen = chosen[:limit]
        return [ws.log[p - 1] for p in chosen]

    async def stream_version(self, workspace: str, stream: str) -> int:
        return len(self._get(workspace).streams.get(stream, [])) - 1

    async def read_log(
        self, workspace: str, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        return self._get(workspace).log[max(after, 0) : max(after, 0) + limit]

    async def tail(
        self,
        after: Mapping[str, int],
        *,
        limit: int = 1000,
        block_ms: int = 1000,
        new_workspaces: bool = False,
    ) -> dict[str, list[RecordedEvent]]:
        def ready() -> dict[str, list[RecordedEvent]]:
            out = {}
            for workspace, pos in after.items():
                ws = self._ws.get(workspace)
                if ws is not None and len(ws.log) > max(pos, 0):
                    out[workspace] = ws.log[max(pos, 0) : max(pos, 0) + limit]
            for workspace in self._listed() - announced - after.keys() if new_workspaces else ():
                out[workspace] = []
            return out

        if limit <= 0 or not (after or new_workspaces):
            return {}
        if new_workspaces and self._announced is None:
            self._announced = self._listed()
        announced = self._announced or set()
        found = ready()
        if not found and block_ms > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(ready), block_ms / 1000)
            found = ready()
        if new_workspaces:
            self._announced = announced | found.keys() | after.keys()
        return found

    async def head(self, workspace: str) -> int:
        return len(self._get(workspace).log)

    async def workspaces(self) -> list[str]:
        listed = self._listed()
        if self._announced is None:  # those added from now on, tail announces
            self._announced = listed
        return sorted(listed)

    async def hold_streams(self, workspace: str, lengths: Mapping[str, int]) -> None:
        self._get(workspace).held.update(lengths)

    async def release_streams(self, workspace: str, streams: Collection[str]) -> None:
        held = self._get(workspace).held
        for stream in streams:
            held.pop(stream, None)

    async def held_streams(self, workspace: str, streams: Collection[str]) -> dict[str, int]:
        held = self._get(workspace).held
        return {s: held[s] for s in streams if s in held}

    async def close(self) -> None:
        return None
