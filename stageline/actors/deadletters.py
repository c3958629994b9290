"""Dead letters as events: nothing is dropped silently, everything can be redriven.

A run whose stage gave up without a fallback ends with ``RunFailed`` carrying a
``dead_letter`` id (the entry lives in the run's own stream, atomically). A
command no worker could handle (undecodable, or delivered too many times) is
recorded as ``DeadLettered`` on the workspace's ``dead-letters`` stream.
Redriving or discarding an entry appends an event; the dead-letter view is a
projection of these events.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Collection

import msgspec

from stageline.actors import commands
from stageline.actors.channels import DATA_FIELD, CommandBus, broker_unavailable
from stageline.actors.commands import StageCommand
from stageline.actors.decide import fold_run
from stageline.actors.events import DeadLetterDiscarded, DeadLettered, DeadLetterRedriven
from stageline.actors.ingest import message_workspace
from stageline.actors.stage import MAX_ERROR_CHARS
from stageline.errors import Conflict, NotFound
from stageline.events import keys
from stageline.events.envelope import ANY, new_event

__all__ = [
    "STREAM",
    "DeadLetterDiscarded",
    "DeadLetterRedriven",
    "DeadLettered",
    "DeadLetters",
    "channel_entry_dead_letter_id",
    "decode_poison",
    "entry_dead_letter_id",
    "redrive_payload",
]
from stageline.events.store import EventStore

STREAM = keys.DEAD_LETTERS_STREAM
_CLOSE = uuid.UUID("0b7e2f4c-5d1a-4c3e-9f60-2a8d7c1b4e95")
_ENTRY = uuid.UUID("0d7c2f4e-5b1a-4c8e-9f63-a2e81b5c7d90")


class DeadLetters:
    """Records poison commands, and redrives or discards ``dead-letters`` entries.

    ``actors`` gives the names of the registered actors: an entry is redriven only
    onto the channel of one of them.
    """

    def __init__(
        self, store: EventStore, bus: CommandBus, actors: Callable[[], Collection[str]]
    ) -> None:
        self.store = store
        self.bus = bus
        self.actors = actors

    async def add(
        self,
        workspace: str,
        actor: str,
        *,
        raw: bytes,
        error: str,
        deliveries: int,
        command: StageCommand | None = None,
        dead_letter_id: uuid.UUID | None = None,
        stage: str | None = None,
    ) -> str:
        """Record a command that could not be handled; returns the dead letter's id.

        Adding again with the same ``dead_letter_id`` records nothing new.
        """
        dead_letter = dead_letter_id or uuid.uuid4()
        event = DeadLettered(
            dead_letter=str(dead_letter),
            actor=actor,
            error=error[:MAX_ERROR_CHARS],
            deliveries=deliveries,
            run_id=command.run_id if command else None,
            stage=stage or (str(command.index) if command else None),
            command=msgspec.to_builtins(command) if command else None,
            raw=None if command else base64.b64encode(raw).decode(),
        )
        await self.store.append(
            workspace,
            STREAM,
            [
                new_event(
                    event,
                    event_id=dead_letter,
                    correlation_id=command.correlation_id if command else None,
                )
            ],
            ANY,
        )
        return str(dead_letter)

    async def _entry(self, workspace: str, dead_letter: str) -> tuple[DeadLettered, bool]:
        """The entry, and whether it is still open."""
        events = await self.store.read_stream(workspace, STREAM)
        entry: DeadLettered | None = None
        closed = False
        for event in events:
            if event.data.get("dead_letter") != dead_letter:
                continue
            if event.type == DeadLettered.topic:
                entry = msgspec.convert(event.data, DeadLettered)
            elif event.type in (DeadLetterRedriven.topic, DeadLetterDiscarded.topic):
                closed = True
        if entry is None:
            raise NotFound(f"no dead letter {dead_letter!r}", dead_letter=dead_letter)
        return entry, not closed

    async def redrive(
        self, workspace: str, dead_letter: str, *, correlation_id: str | None = None
    ) -> int:
        """Put a poison command back on its actor's channel (an ingest entry back on the
        ingest channel, as it was); returns the log position.

        Published before it is recorded: a crash in between leaves the entry open
        and a second redrive only repeats a command, which the version checks make
        harmless. ``Conflict`` if the entry is closed, or cannot be put back as it is
        (``redrive_payload``).
        """
        entry, is_open = await self._entry(workspace, dead_letter)
        if not is_open:
            raise Conflict("dead letter is already closed", dead_letter=dead_letter)
        payload = redrive_payload(entry, workspace, self.actors())
        with broker_unavailable():
            if isinstance(payload, StageCommand):
                await self.bus.publish([(entry.actor, payload)])
            elif entry.actor == keys.INGEST_ACTOR:  # a new entry: its events get new ids
                await self.bus.client.xadd(keys.INGEST_CHANNEL, {DATA_FIELD: payload})
            else:
                channel = keys.stage_channel(entry.actor)
                await self.bus.client.xadd(channel, {DATA_FIELD: payload})
        return await self._close(
            workspace, DeadLetterRedriven(dead_letter=dead_letter), correlation_id
        )

    async def discard(
        self,
        workspace: str,
        stream: str,
        dead_letter: str,
        reason: str,
        *,
        correlation_id: str | None = None,
    ) -> int:
        """Close an entry without redriving it: an event on the entry's stream, not a deletion.

        ``stream`` is the run's stream for a failed run, else ``dead-letters``;
        ``Conflict`` if the entry is closed already. Returns the log position.
        """
        event = DeadLetterDiscarded(dead_letter=dead_letter, reason=reason)
        if stream == STREAM:
            _, is_open = await self._entry(workspace, dead_letter)
        else:
            state = fold_run(await self.store.read_stream(workspace, stream))
            is_open = state.dead_letter == dead_letter
        if not is_open:
            raise Conflict("dead letter is not open", dead_letter=dead_letter)
        return await self._close(workspace, event, correlation_id, stream=stream)

    async def _close(
        self,
        workspace: str,
        event: DeadLetterRedriven | DeadLetterDiscarded,
        correlation_id: str | None,
        *,
        stream: str = STREAM,
    ) -> int:
        # one close per entry, whoever gets there first: the store drops a second
        # event with the same id, so other writers on the stream never clash with us
        result = await self.store.append(
            workspace,
            stream,
            [new_event(event, event_id=close_id(event.dead_letter), correlation_id=correlation_id)],
            ANY,
        )
        if result.deduplicated:
            raise Conflict("dead letter is already closed", dead_letter=event.dead_letter)
        return result.position


def close_id(dead_letter: str) -> uuid.UUID:
    """The event id of the one event that may ever close ``dead_letter``."""
    return uuid.uuid5(_CLOSE, dead_letter)


def entry_dead_letter_id(actor: str, entry_id: bytes) -> uuid.UUID:
    """The dead letter id of the entry ``entry_id`` of ``actor``'s channel: the same entry
    dead-lettered again (its acknowledgement was lost) is recorded once, and a redriven
    command, a new entry, gets a dead letter of its own."""
    return channel_entry_dead_letter_id(keys.stage_channel(actor), entry_id)


def channel_entry_dead_letter_id(channel: str, entry_id: bytes) -> uuid.UUID:
    """The dead letter id of the entry ``entry_id`` of the Redis Stream ``channel``."""
    return uuid.uuid5(_ENTRY, f"{channel}\0{entry_id.decode()}")


def redrive_payload(
    entry: DeadLettered, workspace: str, actors: Collection[str]
) -> StageCommand | bytes:
    """What redriving ``workspace``'s ``entry`` puts back on its actor's channel: its
    command, or the raw bytes of an entry no worker could decode.

    ``Conflict`` for an entry that cannot go back as it is: an ``actor`` that is not one
    of ``actors`` (the registered ones: no other channel has workers, and any other name
    would have the broker write wherever it says), a ``command`` that is not a
    ``StageCommand``, a ``raw`` that is not base64, or a command (in ``command``, or in
    ``raw``) of another workspace, which would make workers write there. Anyone may
    append a ``DeadLettered``, so its contents are checked like any input.
    """

    def refused(why: str) -> Conflict:
        return Conflict(f"dead letter cannot be redriven: {why}", dead_letter=entry.dead_letter)

    if entry.actor == keys.INGEST_ACTOR:
        return _ingest_payload(entry, workspace, refused)
    if entry.actor not in actors:
        raise refused(f"its actor {entry.actor!r} is not a registered actor")
    payload: StageCommand | bytes
    command: StageCommand | None
    if entry.command is not None:
        try:
            payload = command = msgspec.convert(entry.command, StageCommand)
        except msgspec.ValidationError as exc:
            raise refused(f"its command is not a stage command ({exc})") from None
    elif entry.raw is not None:
        try:
            payload = base64.b64decode(entry.raw, validate=True)
        except binascii.Error:
            raise refused("its raw entry is not base64") from None
        command = decode_poison(payload)
    else:
        raise refused("it holds neither a command nor a raw entry")
    if command is not None and command.workspace != workspace:
        raise refused(f"its command belongs to workspace {command.workspace!r}")
    return payload


def _ingest_payload(
    entry: DeadLettered, workspace: str, refused: Callable[[str], Conflict]
) -> bytes:
    """The raw ingest entry, unless it names another workspace than the dead letter's."""
    try:
        payload = base64.b64decode(entry.raw or "", validate=True)
    except binascii.Error:
        raise refused("its raw entry is not base64") from None
    named = message_workspace(payload)
    if named is not None and named != workspace:
        raise refused(f"its entry belongs to workspace {named!r}")
    return payload


def decode_poison(raw: bytes) -> StageCommand | None:
    try:
        return commands.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
