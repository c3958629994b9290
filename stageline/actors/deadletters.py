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
import uuid
from typing import Any

import msgspec

from stageline.actors import commands
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.errors import NotFound
from stageline.events import keys
from stageline.events.envelope import ANY, DomainEvent, new_event
from stageline.events.store import EventStore

STREAM = "dead-letters"


class DeadLettered(DomainEvent, frozen=True, kw_only=True):
    """A command no worker could handle, kept with why and how often it was tried."""

    topic = "DeadLettered"

    dead_letter: str
    actor: str
    error: str
    deliveries: int
    run_id: str | None = None
    stage: str | None = None
    command: dict[str, Any] | None = None
    raw: str | None = None  # base64 of an entry that did not decode


class DeadLetterRedriven(DomainEvent, frozen=True, kw_only=True):
    topic = "DeadLetterRedriven"

    dead_letter: str


class DeadLetterDiscarded(DomainEvent, frozen=True, kw_only=True):
    topic = "DeadLetterDiscarded"

    dead_letter: str
    reason: str = ""


class DeadLetters:
    """Records poison commands, and redrives or discards ``dead-letters`` entries."""

    def __init__(self, store: EventStore, bus: CommandBus) -> None:
        self.store = store
        self.bus = bus

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
    ) -> str:
        """Record a command that could not be handled; returns the dead letter's id.

        Adding again with the same ``dead_letter_id`` records nothing new.
        """
        dead_letter = dead_letter_id or uuid.uuid4()
        event = DeadLettered(
            dead_letter=str(dead_letter),
            actor=actor,
            error=error[:2000],
            deliveries=deliveries,
            run_id=command.run_id if command else None,
            stage=str(command.index) if command else None,
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

    async def find(self, workspace: str, dead_letter: str) -> DeadLettered:
        """The ``DeadLettered`` entry with this id; ``NotFound`` if there is none."""
        for event in await self.store.read_stream(workspace, STREAM, backwards=True):
            if event.type == DeadLettered.topic and event.data.get("dead_letter") == dead_letter:
                return msgspec.convert(event.data, DeadLettered)
        raise NotFound(f"no dead letter {dead_letter!r}", dead_letter=dead_letter)

    async def redrive(
        self, workspace: str, dead_letter: str, *, correlation_id: str | None = None
    ) -> None:
        """Put a poison command back on its actor's channel and record that it was."""
        entry = await self.find(workspace, dead_letter)
        if entry.command is not None:
            command = msgspec.convert(entry.command, StageCommand)
            await self.bus.publish([(entry.actor, command)])
        else:
            raw = base64.b64decode(entry.raw or "")
            await self.bus.client.xadd(keys.stage_channel(entry.actor), {"__data__": raw})
        await self.store.append(
            workspace,
            STREAM,
            [new_event(DeadLetterRedriven(dead_letter=dead_letter), correlation_id=correlation_id)],
            ANY,
        )

    async def discard(
        self,
        workspace: str,
        stream: str,
        dead_letter: str,
        reason: str,
        *,
        correlation_id: str | None = None,
    ) -> None:
        """Close an entry without redriving it: an event on the entry's stream, not a deletion."""
        await self.store.append(
            workspace,
            stream,
            [
                new_event(
                    DeadLetterDiscarded(dead_letter=dead_letter, reason=reason),
                    correlation_id=correlation_id,
                )
            ],
            ANY,
        )


def decode_poison(raw: bytes) -> StageCommand | None:
    try:
        return commands.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
