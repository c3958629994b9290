"""Turns a batch of stage commands into events: start, run, record, hand on.

Every transition is appended with the run's expected version, so a duplicated
or redelivered command can never record a transition twice; a clash is
resolved by reading the run and asking ``decide``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from stageline.actors import commands
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.decide import (
    ABANDON_GRACE_SECONDS,
    Begin,
    Defer,
    Drop,
    Finish,
    Forward,
    RunState,
    decide_finish,
    decide_start,
    fold_run,
)
from stageline.actors.events import (
    RunCompleted,
    RunFailed,
    StageCompleted,
    StageFailed,
    StageStarted,
)
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.schedule import Scheduler
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.errors import ConcurrencyError, StagelineError
from stageline.events import keys
from stageline.events.envelope import DomainEvent, NewEvent, new_event
from stageline.events.store import AppendRequest, EventStore

log = structlog.get_logger(__name__)

_MAX_ROUNDS = 4  # clash -> read -> decide rounds before a command is left for redelivery
_MAX_ERROR_CHARS = 2000


@dataclass
class _Attempt:
    command: StageCommand
    pipeline: Pipeline
    spec: StageSpec
    attempt: int
    version: int
    started_id: str
    outcome: StageResult | BaseException | None = None
    duration_ms: float = 0.0
    completed_id: str = ""


@dataclass
class _Batch:
    """What one batch leaves behind to send once its appends are done."""

    forwards: list[tuple[str, StageCommand]] = field(default_factory=list)
    deferred: list[tuple[float, str, bytes]] = field(default_factory=list)


class StageRuntime:
    def __init__(
        self,
        store: EventStore,
        catalog: PipelineCatalog,
        actors: ActorRegistry,
        bus: CommandBus,
        scheduler: Scheduler,
        *,
        clock: Callable[[], float] = time.time,
        abandon_grace: float = ABANDON_GRACE_SECONDS,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.actors = actors
        self.bus = bus
        self.scheduler = scheduler
        self.clock = clock
        self.abandon_grace = abandon_grace

    async def handle(self, actor: str, batch: Sequence[StageCommand]) -> None:
        """Process a batch; raises only on infrastructure failure (the batch stays pending)."""
        out = _Batch()
        attempts = await self._begin(actor, batch, out)
        await asyncio.gather(*(self._run(a) for a in attempts))
        await self._finish(attempts, out)
        await self.bus.publish(out.forwards)
        await self.scheduler.schedule(out.deferred)

    # -- start ------------------------------------------------------------------

    async def _begin(
        self, actor: str, batch: Sequence[StageCommand], out: _Batch
    ) -> list[_Attempt]:
        todo: list[tuple[StageCommand, Begin]] = [(c, Begin(c.version, 1)) for c in batch]
        attempts: list[_Attempt] = []
        for _ in range(_MAX_ROUNDS):
            if not todo:
                break
            prepared: list[tuple[StageCommand, Pipeline, StageSpec, Begin, NewEvent]] = []
            requests: list[AppendRequest] = []
            for command, begin in todo:
                try:
                    pipeline = self.catalog.get(
                        command.workspace, command.pipeline, command.pipeline_version
                    )
                    spec = pipeline.stage(command.index)
                except (StagelineError, IndexError) as exc:
                    await self.bus.dead_letter(actor, commands.encode(command), str(exc))
                    continue
                events = []
                if begin.abandoned is not None:
                    events.append(
                        self._event(
                            StageFailed(
                                stage=spec.name,
                                index=command.index,
                                attempt=begin.abandoned,
                                error_type="AttemptAbandoned",
                                error="no result within the stage timeout; worker presumed lost",
                                will_retry=True,
                            ),
                            command,
                        )
                    )
                started = self._event(
                    StageStarted(stage=spec.name, index=command.index, attempt=begin.attempt),
                    command,
                )
                events.append(started)
                prepared.append((command, pipeline, spec, begin, started))
                requests.append(
                    AppendRequest(
                        command.workspace, keys.run_stream(command.run_id), events, begin.version
                    )
                )
            results = await self.store.append_batch(requests)
            clashed: list[tuple[StageCommand, Pipeline, StageSpec]] = []
            for (command, pipeline, spec, begin, started), result in zip(
                prepared, results, strict=True
            ):
                if isinstance(result, ConcurrencyError):
                    clashed.append((command, pipeline, spec))
                elif isinstance(result, Exception):
                    raise result
                else:
                    attempts.append(
                        _Attempt(
                            command,
                            pipeline,
                            spec,
                            begin.attempt,
                            result.version,
                            str(started.event_id),
                        )
                    )
            todo = []
            states = await self._states([c for c, _, _ in clashed])
            for (command, pipeline, spec), state in zip(clashed, states, strict=True):
                decision = decide_start(
                    state,
                    command.index,
                    now=self.clock(),
                    timeout=spec.timeout_seconds,
                    grace=self.abandon_grace,
                )
                if isinstance(decision, Begin):
                    todo.append((command, decision))
                elif isinstance(decision, Defer):
                    out.deferred.append(
                        (decision.until, keys.stage_channel(actor), commands.encode(command))
                    )
                else:
                    self._settle(command, pipeline, decision, out)
        return attempts

    # -- run --------------------------------------------------------------------

    async def _run(self, a: _Attempt) -> None:
        c = a.command
        ctx = StageContext(
            c.workspace, c.run_id, a.spec.name, a.attempt, a.spec.params, c.correlation_id
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(a.spec.timeout_seconds):
                a.outcome = await self.actors.call(a.spec.actor, dict(c.item), ctx)
        except TimeoutError:
            a.outcome = TimeoutError(f"stage exceeded its timeout of {a.spec.timeout_seconds}s")
        except Exception as exc:
            a.outcome = exc
        a.duration_ms = round((time.perf_counter() - started) * 1000, 3)

    # -- record -----------------------------------------------------------------

    def _result_events(self, a: _Attempt) -> list[NewEvent]:
        c, spec = a.command, a.spec
        cause = a.started_id
        if isinstance(a.outcome, StageResult):
            completed = self._event(
                StageCompleted(
                    stage=spec.name,
                    index=c.index,
                    attempt=a.attempt,
                    duration_ms=a.duration_ms,
                    output=a.outcome.output,
                    metadata=a.outcome.metadata,
                ),
                c,
                cause,
            )
            a.completed_id = str(completed.event_id)
            events = [completed, *(self._event(e, c, cause) for e in a.outcome.events)]
            if c.index == len(a.pipeline.stages) - 1:
                events.append(self._event(RunCompleted(), c, a.completed_id))
            return events
        error = a.outcome if isinstance(a.outcome, BaseException) else RuntimeError("no outcome")
        error_type, message = type(error).__name__, str(error)[:_MAX_ERROR_CHARS]
        return [
            self._event(
                StageFailed(
                    stage=spec.name,
                    index=c.index,
                    attempt=a.attempt,
                    error_type=error_type,
                    error=message,
                    duration_ms=a.duration_ms,
                ),
                c,
                cause,
            ),
            self._event(RunFailed(stage=spec.name, error_type=error_type, error=message), c, cause),
        ]

    async def _finish(self, attempts: list[_Attempt], out: _Batch) -> None:
        todo = [(a, self._result_events(a), a.version) for a in attempts]
        for _ in range(_MAX_ROUNDS):
            if not todo:
                return
            results = await self.store.append_batch(
                [
                    AppendRequest(
                        a.command.workspace, keys.run_stream(a.command.run_id), ev, version
                    )
                    for a, ev, version in todo
                ]
            )
            clashed: list[tuple[_Attempt, list[NewEvent]]] = []
            for (a, events, _), result in zip(todo, results, strict=True):
                if isinstance(result, ConcurrencyError):
                    clashed.append((a, events))
                elif isinstance(result, Exception):
                    raise result
                elif isinstance(a.outcome, StageResult):
                    item = {**a.command.item, **a.outcome.output}
                    self._hand_on(
                        a.command,
                        a.pipeline,
                        a.command.index + 1,
                        result.version,
                        item,
                        a.completed_id,
                        out,
                    )
            todo = []
            states = await self._states([a.command for a, _ in clashed])
            for (a, events), state in zip(clashed, states, strict=True):
                decision = decide_finish(state, a.command.index, a.attempt)
                if isinstance(decision, Finish):
                    todo.append((a, events, decision.version))
                else:
                    self._settle(a.command, a.pipeline, decision, out)
        for a, _, _ in todo:
            log.warning("stage.finish_unsettled", **_context(a.command), attempt=a.attempt)

    # -- helpers ----------------------------------------------------------------

    def _settle(
        self, command: StageCommand, pipeline: Pipeline, decision: Drop | Forward, out: _Batch
    ) -> None:
        if isinstance(decision, Forward):
            self._hand_on(
                command,
                pipeline,
                decision.next_index,
                decision.version,
                decision.item,
                decision.cause,
                out,
            )
        else:
            log.debug("stage.command_dropped", reason=decision.reason, **_context(command))

    @staticmethod
    def _hand_on(
        command: StageCommand,
        pipeline: Pipeline,
        index: int,
        version: int,
        item: dict[str, Any],
        cause: str | None,
        out: _Batch,
    ) -> None:
        if index >= len(pipeline.stages):
            return
        nxt = StageCommand(
            workspace=command.workspace,
            run_id=command.run_id,
            pipeline=command.pipeline,
            pipeline_version=command.pipeline_version,
            index=index,
            version=version,
            item=item,
            correlation_id=command.correlation_id,
            cause=cause,
        )
        out.forwards.append((pipeline.stage(index).actor, nxt))

    async def _states(self, batch: Sequence[StageCommand]) -> list[RunState]:
        streams = await asyncio.gather(
            *(self.store.read_stream(c.workspace, keys.run_stream(c.run_id)) for c in batch)
        )
        return [fold_run(events) for events in streams]

    @staticmethod
    def _event(payload: DomainEvent, command: StageCommand, cause: str | None = None) -> NewEvent:
        return new_event(
            payload,
            correlation_id=command.correlation_id,
            causation_id=cause if cause is not None else command.cause,
        )


def _context(command: StageCommand) -> dict[str, Any]:
    return {
        "workspace": command.workspace,
        "run_id": command.run_id,
        "stage_index": command.index,
        "correlation_id": command.correlation_id,
    }
