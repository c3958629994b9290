"""Run-level operations: undo, retry and cancel, each recorded as new events.

Each reads the run, decides from its folded state, and appends with the run's
version as the expected version, re-reading on a clash; nothing is ever
edited or deleted. Once a cancel or an undo is recorded, a stop notice tells the
workers, so that one running an attempt of the run interrupts it (``stops``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from stageline.actors import stops
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.compensation import Compensator, undo_run
from stageline.actors.decide import RunState, fold_run
from stageline.actors.events import (
    REPORTED_VERSION,
    DeadLetterDiscarded,
    DeadLetterRedriven,
    RunCancelled,
    RunCompensated,
    RunFailed,
    RunRetried,
)
from stageline.actors.pipeline import Pipeline, PipelineCatalog
from stageline.actors.stage import ActorRegistry
from stageline.errors import ConcurrencyError, Conflict, NotFound
from stageline.events import keys
from stageline.events.envelope import DomainEvent, NewEvent, new_event
from stageline.events.store import EventStore

_ATTEMPTS = 5


class OperationResult(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    status: str
    position: int
    changed: bool
    note: str | None = None
    """What the caller should know besides (a reported run's cancel: its reporter runs on)."""


def _reported_note(run_id: str) -> str:
    return (
        f"run {run_id!r} was reported from outside: it is recorded cancelled, and its "
        "reporter's next append to it is refused (409), but stageline cannot stop the "
        "reporter's own process"
    )


def _check_driven(state: RunState, run_id: str, done: str) -> None:
    """``Conflict`` if the run was reported from outside: only its reporter drives it."""
    if state.pipeline_version == REPORTED_VERSION:
        raise Conflict(
            f"run {run_id!r} was reported from outside (pipeline_version {REPORTED_VERSION}); "
            f"stageline does not drive it, so it cannot be {done} here",
            run_id=run_id,
            status=state.status,
            pipeline_version=REPORTED_VERSION,
        )


class RunOperations:
    """Undo, retry and cancel runs."""

    def __init__(
        self, store: EventStore, catalog: PipelineCatalog, actors: ActorRegistry, bus: CommandBus
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.actors = actors
        self.bus = bus

    async def undo(
        self, workspace: str, run_id: str, *, correlation_id: str | None = None
    ) -> OperationResult:
        """Compensate every stage's effects, last stage first; the run ends ``compensated``.

        Works on a run in any state: a running one stops, its attempt in hand interrupted
        (a stop notice) or, if the notice is lost, its result discarded. Undoing an undone
        run changes nothing (but sends the notice again). ``Conflict`` for a run reported
        from outside: its effects are the reporter's, stageline cannot reverse them.
        """

        def plan(state: RunState) -> list[DomainEvent] | None:
            _check_driven(state, run_id, "undone")
            if state.terminal == RunCompensated.topic:
                return None
            pipeline = self._pipeline(workspace, state)
            compensations = undo_run(state, self._compensator_of(pipeline))
            closing: list[DomainEvent] = []
            if state.dead_letter:  # an undone run has nothing left to redrive
                closing.append(DeadLetterDiscarded(dead_letter=state.dead_letter, reason="undo"))
            return [*compensations, *closing, RunCompensated(stages=state.stage_names)]

        result = await self._apply(workspace, run_id, plan, "compensated", correlation_id)
        await stops.publish(self.bus.client, workspace, run_id)
        return result

    async def cancel(
        self, workspace: str, run_id: str, *, reason: str = "", correlation_id: str | None = None
    ) -> OperationResult:
        """Stop a run; ``Conflict`` if it has already ended.

        Once ``RunCancelled`` is recorded, a stop notice interrupts the attempt a worker
        is running of the run (``CancelledError`` at the stage's next ``await``); a
        notice lost, or a plain function, runs on and its result is discarded at the
        stage boundary. Cancelling a cancelled run records nothing but sends the notice
        again. A run reported from outside is recorded cancelled too (a reporter that
        crashed leaves it unfinished otherwise), with a ``note`` that stageline cannot
        stop the reporter's process; the reporter's next append to it is refused.
        """
        reported = False

        def plan(state: RunState) -> list[DomainEvent] | None:
            nonlocal reported
            reported = state.pipeline_version == REPORTED_VERSION
            if state.terminal == RunCancelled.topic:
                return None
            if state.terminal:
                raise Conflict(
                    f"run has already ended ({state.status})", run_id=run_id, status=state.status
                )
            return [RunCancelled(reason=reason)]

        result = await self._apply(workspace, run_id, plan, "cancelled", correlation_id)
        if reported:  # its stages run in the reporter's process: no worker holds them
            return msgspec.structs.replace(result, note=_reported_note(run_id))
        await stops.publish(self.bus.client, workspace, run_id)
        return result

    async def retry(
        self, workspace: str, run_id: str, *, correlation_id: str | None = None
    ) -> OperationResult:
        """Drive a failed run again from the stage that failed, with a fresh attempt.

        Closes the run's dead letter, if it has one. ``Conflict`` unless the run failed,
        or if it was reported from outside (stageline has no stages to drive it with).
        """
        for _ in range(_ATTEMPTS):
            state = await self._load(workspace, run_id)
            _check_driven(state, run_id, "retried")
            if state.terminal != RunFailed.topic:
                raise Conflict(
                    "only a failed run can be retried",
                    run_id=run_id,
                    status=state.status,
                )
            pipeline = self._pipeline(workspace, state)
            index = state.cursor
            attempt = state.progress(index).attempt + 1
            events: list[DomainEvent] = [
                RunRetried(stage=pipeline.stage_names[index], index=index, attempt=attempt)
            ]
            if state.dead_letter:
                events.append(DeadLetterRedriven(dead_letter=state.dead_letter))
            new = self._events(events, state, correlation_id)
            try:
                result = await self.store.append(
                    workspace, keys.run_stream(run_id), new, state.version
                )
            except ConcurrencyError:
                continue
            command = StageCommand(
                workspace=workspace,
                run_id=run_id,
                pipeline=pipeline.name,
                pipeline_version=pipeline.version,
                index=index,
                version=result.version,
                item=state.item,
                attempt=attempt,
                correlation_id=new[0].correlation_id,
                cause=str(new[0].event_id),
                lost=state.progress(index).abandoned,
            )
            # recorded: a broker that fails now leaves the run to the reconciler
            await self.bus.hand_on([(pipeline.stage(index).actor, command)], after="RunRetried")
            return OperationResult(run_id, "processing", result.position, True)
        raise Conflict("run kept changing; try again", run_id=run_id)

    async def _apply(
        self,
        workspace: str,
        run_id: str,
        plan: Callable[[RunState], list[DomainEvent] | None],
        status: str,
        correlation_id: str | None,
    ) -> OperationResult:
        for _ in range(_ATTEMPTS):
            state = await self._load(workspace, run_id)
            payloads = plan(state)
            if payloads is None:
                head = await self.store.read_stream(
                    workspace, keys.run_stream(run_id), backwards=True, limit=1
                )
                return OperationResult(run_id, status, head[0].position, False)
            try:
                result = await self.store.append(
                    workspace,
                    keys.run_stream(run_id),
                    self._events(payloads, state, correlation_id),
                    state.version,
                )
            except ConcurrencyError:
                continue
            return OperationResult(run_id, status, result.position, True)
        raise Conflict("run kept changing; try again", run_id=run_id)

    async def _load(self, workspace: str, run_id: str) -> RunState:
        keys.check_workspace(workspace)
        state = fold_run(await self.store.read_stream(workspace, keys.run_stream(run_id)))
        if state.version < 0 or state.pipeline is None:
            raise NotFound(f"no run {run_id!r}", run_id=run_id)
        if state.pipeline_version == REPORTED_VERSION:
            return state  # no pipeline has its version
        # the version the run started with, even if its config was changed or deleted since
        await self.catalog.prefetch([(workspace, state.pipeline, state.pipeline_version)])
        return state

    def _pipeline(self, workspace: str, state: RunState) -> Pipeline:
        assert state.pipeline is not None
        return self.catalog.get(workspace, state.pipeline, state.pipeline_version)

    def _compensator_of(self, pipeline: Pipeline) -> Callable[[int], Compensator | None]:
        def of(index: int) -> Compensator | None:
            if index >= len(pipeline.stages):
                return None
            return self.actors.compensator(pipeline.stage(index).actor)

        return of

    @staticmethod
    def _events(
        payloads: Sequence[DomainEvent], state: RunState, correlation_id: str | None
    ) -> list[NewEvent]:
        cid = correlation_id or state.correlation_id
        return [new_event(p, correlation_id=cid) for p in payloads]
