"""The ``EventStore`` contract every store adapter fulfils."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import msgspec

from stageline.errors import EventIdReused, InvalidArgument
from stageline.events import codec
from stageline.events.envelope import ANY, NewEvent, RecordedEvent
from stageline.events.keys import check_stream, check_workspace

MAX_EVENTS_PER_APPEND = 1000
"""Largest append any store takes (the Redis script unpacks 4 hash fields per event)."""


class Outbox(msgspec.Struct, frozen=True):
    """What an append also writes, in the same atomic step, when every one of its events is
    new: entries added to other streams of the store's server (a transactional outbox), and
    one entry of a consumer group acknowledged. An append that clashes or repeats one that
    landed writes none of it."""

    entries: Sequence[tuple[str, bytes]] = ()
    """``(stream key, payload)``: each added as its ``__data__`` field."""
    maxlen: int = 10_000
    """Each stream is trimmed to this many entries, of those every group acknowledged."""
    ack: tuple[str, str, bytes] | None = None
    """``(stream key, group, entry id)``."""


class AppendRequest(msgspec.Struct, frozen=True):
    workspace: str
    stream: str
    events: Sequence[NewEvent]
    expected_version: int = ANY
    outbox: Outbox | None = None
    """Only the Redis store takes one (its streams are on the same server)."""
    whole: bool = False
    """A retry must repeat the whole append, and the same events: if the stream holds
    of ``events`` (by id) one with other content (``differences``), the append is refused
    with ``EventIdReused``; if it holds some of them but not all, with ``PartialRetry``;
    either writes nothing. Otherwise (the default) the events it holds
    are dropped unseen and the rest appended: what internal callers that retry their own
    appends (stages, an import) rely on, at no extra read."""
    recorded_at: datetime | None = None
    """When the events were recorded, instead of now by the store's clock: an import that
    keeps an exported log's times. Timezone-aware; kept to the millisecond (truncated),
    as the store's own times are."""


class AppendResult(msgspec.Struct, frozen=True):
    """Where an append's events landed.

    ``versions`` and ``positions`` follow the order of the events given; an
    event that had been appended before keeps its original place, and
    ``deduplicated`` is true when every event had.
    """

    stream: str
    version: int
    versions: list[int]
    positions: list[int]
    deduplicated: bool

    @property
    def position(self) -> int:
        """The highest log position of this append's events."""
        return max(self.positions)


class EventStore(Protocol):
    """An append-only log of streams inside workspaces.

    Versions are 0-based within a stream; positions are 1-based within the
    workspace's global log (0 means "before the first event").
    """

    async def append(
        self,
        workspace: str,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int = ANY,
        *,
        whole: bool = False,
    ) -> AppendResult:
        """Append atomically, or raise ``ConcurrencyError`` carrying the actual version
        (``PartialRetry`` for a ``whole`` append that repeats only part of one)."""
        ...

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        """Many independent appends in one round trip; a failed one is returned, not raised."""
        ...

    async def read_stream(
        self,
        workspace: str,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """A stream's events from ``from_version`` (default: start, or end when backwards)."""
        ...

    async def stream_version(self, workspace: str, stream: str) -> int:
        """The stream's last version, -1 when it does not exist."""
        ...

    async def read_log(
        self, workspace: str, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """The workspace log's events with position > ``after``, oldest first."""
        ...

    async def tail(
        self,
        after: Mapping[str, int],
        *,
        limit: int = 1000,
        block_ms: int = 1000,
        new_workspaces: bool = False,
    ) -> dict[str, list[RecordedEvent]]:
        """Each workspace's events past its ``after`` position, waiting for the first.

        ``after`` maps workspaces to positions. Returns at once with up to
        ``limit`` events of every workspace that has some (and only those),
        else waits up to ``block_ms`` for any of them to get one; ``{}`` when
        none did. One read serves any number of workspaces.

        With ``new_workspaces``, a new workspace (its first event came after
        this store's first ``workspaces`` or ``tail`` with ``new_workspaces``)
        that ``after`` does not name ends the wait too (``after`` may then be
        empty), and comes back once with no events: the caller follows it from
        where it stands (its checkpoints) without waiting to list it. Best
        effort: one a store misses is listed by ``workspaces``. The store keeps
        one cursor of the new workspaces, so one caller per store asks for them
        (the projector).
        """
        ...

    async def head(self, workspace: str) -> int:
        """The position of the workspace's newest event, 0 when empty."""
        ...

    async def workspaces(self) -> list[str]:
        """Every workspace that has at least one event."""
        ...

    async def hold_streams(self, workspace: str, lengths: Mapping[str, int]) -> None:
        """Hold each stream at a length: ``held_streams`` names it with that length from
        now on (an imported run, not to be driven while it has no more events than it was
        imported with, so not part-way through the import either). Holding a stream
        again moves its hold."""
        ...

    async def release_streams(self, workspace: str, streams: Collection[str]) -> None:
        """Let go of the holds of ``streams`` (those not held are left as they are)."""
        ...

    async def held_streams(self, workspace: str, streams: Collection[str]) -> dict[str, int]:
        """Of ``streams``, those held, each with the length it is held at."""
        ...

    async def close(self) -> None: ...


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(at: datetime) -> int:
    """``at`` (timezone-aware) in whole milliseconds since the epoch, as the log stores times."""
    # not at.timestamp() * 1000: a float that lands a hair below the millisecond it names
    return (at - _EPOCH) // _MS


def differences(sent: NewEvent, stored: RecordedEvent) -> list[str]:
    """What of ``sent`` differs from the event the stream holds under its id: ``type``,
    ``schema_version``, ``causation_id``, ``data``; nothing for a retry of it.

    Not ``occurred_at`` nor ``correlation_id``: an append fills them in when the sender
    leaves them out (with now, the request's), so an honest retry may differ there.
    """
    out = [
        name
        for name in ("type", "schema_version", "causation_id")
        if getattr(sent, name) != getattr(stored, name)
    ]
    if codec.stored_data(sent.data) != stored.data:
        out.append("data")
    return out


def check_repeat(request: AppendRequest, held: Iterable[tuple[int, RecordedEvent]]) -> None:
    """``EventIdReused`` unless each event the stream holds of ``request``'s (``held``:
    the index of each in ``request.events``, and the stored event) is the one it holds."""
    for index, stored in held:
        sent = request.events[index]
        differs = differences(sent, stored)
        if differs:
            raise EventIdReused(
                request.stream,
                index=index,
                event_id=str(sent.event_id),
                at=stored.version,
                differs=differs,
            )


def check_append(request: AppendRequest) -> None:
    """Reject an append the log must never hold, before anything is written."""
    check_workspace(request.workspace, internal=True)
    check_request(request)


def check_request(request: AppendRequest) -> None:
    """What ``check_append`` checks but the workspace name, for a caller that checked it once."""
    check_stream(request.stream)
    events = request.events
    count = len(events)
    if not count:
        raise InvalidArgument("an append needs at least one event", stream=request.stream)
    if count > MAX_EVENTS_PER_APPEND:
        raise InvalidArgument(
            f"an append takes at most {MAX_EVENTS_PER_APPEND} events", count=count
        )
    if request.expected_version < ANY:
        raise InvalidArgument(
            "expected_version must be >= 0, NO_STREAM (-1) or ANY (-2)",
            expected_version=request.expected_version,
        )
    if request.recorded_at is not None and request.recorded_at.utcoffset() is None:
        raise InvalidArgument("recorded_at must be timezone-aware", stream=request.stream)
    # UUID hashes in Python code; its int is a plain attribute
    if count > 1 and len({e.event_id.int for e in events}) != count:
        raise InvalidArgument("event_id repeated within one append", stream=request.stream)
