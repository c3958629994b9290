"""Submitting a run: one ``RunSubmitted`` append, and the first stage's command.

When the channels live on the store's server, the command is written by the append
itself (its outbox): one round trip, and no crash can leave a run recorded but never
handed on. Otherwise, and when the append repeats one that landed, it is published after;
a broker that fails then does not fail the submission, which is recorded: the reconciler
hands the run on.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from stageline.actors import commands
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.events import RunSubmitted
from stageline.actors.pipeline import PipelineCatalog
from stageline.errors import ConcurrencyError, Conflict
from stageline.events import keys
from stageline.events.coalesce import AppendCoalescer
from stageline.events.envelope import NO_STREAM, NewEvent, new_event
from stageline.events.redis_store import RedisEventStore, same_server
from stageline.events.store import AppendRequest, AppendResult, EventStore, Outbox

_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4b7f-9a51-2c4e0d7b9e13")


class SubmitResult(msgspec.Struct, frozen=True):
    run_id: str
    stream: str
    position: int
    deduplicated: bool


class Submitter:
    """Starts runs. With an idempotency key, the same key always means the same run."""

    def __init__(self, store: EventStore, catalog: PipelineCatalog, bus: CommandBus) -> None:
        self.store = store
        self.catalog = catalog
        self.bus = bus
        # with the channels on the store's server, the append writes the first command (the
        # outbox), and the runs submitted at one moment (concurrent requests) go in one append
        outbox = isinstance(store, RedisEventStore) and same_server(store.client, bus.client)
        self._appends = AppendCoalescer(store.append_batch) if outbox else None

    async def submit(
        self,
        workspace: str,
        pipeline_name: str,
        item: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> SubmitResult:
        """Record ``RunSubmitted`` and hand the run to its first stage.

        The run uses the pipeline's latest version, recorded on ``RunSubmitted``
        and carried by every command. Raises ``NotFound`` for an unknown (or
        deleted) pipeline and ``Conflict`` when an idempotency key is reused
        with a different request.
        """
        keys.check_workspace(workspace)
        pipeline = await self.catalog.resolve(workspace, pipeline_name)  # the latest version
        if idempotency_key is not None:
            run_id = str(uuid.uuid5(_NAMESPACE, f"{workspace}\0{idempotency_key}"))
        else:
            run_id = str(uuid.uuid4())
        stream = keys.run_stream(run_id)
        submitted = RunSubmitted(
            pipeline=pipeline.name,
            pipeline_version=pipeline.version,
            stages=pipeline.stage_names,
            input=item,
        )
        event = new_event(
            submitted,
            event_id=uuid.uuid5(_NAMESPACE, f"submit\0{run_id}"),
            correlation_id=correlation_id or run_id,
        )
        first_actor = pipeline.stages[0].actor
        command = StageCommand(
            workspace=workspace,
            run_id=run_id,
            pipeline=pipeline.name,
            pipeline_version=pipeline.version,
            index=0,
            version=0,  # RunSubmitted's, as the stream must not exist yet
            item=item,
            correlation_id=event.correlation_id,
            cause=str(event.event_id),
        )
        try:
            result, handed_on = await self._append(workspace, stream, event, first_actor, command)
        except ConcurrencyError as exc:
            raise Conflict("run id already in use", run_id=run_id) from exc
        if handed_on:
            return SubmitResult(run_id, stream, result.position, False)
        if result.deduplicated:
            first = (await self.store.read_stream(workspace, stream, limit=1))[0]
            if first.data.get("input") != msgspec.to_builtins(item) or (
                first.data.get("pipeline") != pipeline.name
            ):
                raise Conflict(
                    "Idempotency-Key was already used for a different request", run_id=run_id
                )
            if await self.store.stream_version(workspace, stream) > 0:
                return SubmitResult(run_id, stream, result.position, True)
            # handing the run on again: with the version it was submitted with, not today's
            pipeline = await self.catalog.resolve(
                workspace, pipeline.name, first.data.get("pipeline_version", pipeline.version)
            )
            first_actor = pipeline.stages[0].actor
            command = msgspec.structs.replace(command, pipeline_version=pipeline.version)
        await self.bus.hand_on([(first_actor, command)], after="RunSubmitted")
        return SubmitResult(run_id, stream, result.position, result.deduplicated)

    async def _append(
        self, workspace: str, stream: str, event: NewEvent, actor: str, command: StageCommand
    ) -> tuple[AppendResult, bool]:
        """Append ``RunSubmitted``, and whether ``command`` went to ``actor``'s channel in
        the same step (through the outbox, written only when the event is new)."""
        try:
            payload = commands.encode(command) if self._appends is not None else None
        # nor can the event be stored (RecursionError: nested too deeply): the append says why
        except (TypeError, ValueError, RecursionError):
            payload = None
        if payload is None or self._appends is None:  # (no outbox, no payload: mypy)
            return await self.store.append(workspace, stream, [event], NO_STREAM), False
        outbox = Outbox([(keys.stage_channel(actor), payload)], maxlen=self.bus.maxlen)
        request = AppendRequest(workspace, stream, [event], NO_STREAM, outbox)
        result = await self._appends.call(request)
        if isinstance(result, Exception):
            raise result
        return result, not result.deduplicated
