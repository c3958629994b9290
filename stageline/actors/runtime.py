"""Turns a batch of stage commands into events: start, run, record, hand on.

Every transition is appended with the run's expected version, so a duplicated
or redelivered command can never record a transition twice; a clash is
resolved by reading the run and asking ``decide``. A failed attempt is
retried later through the durable scheduler, never slept on; when retries are
spent the stage's effects are compensated and its fallback applies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from stageline.actors import commands
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.compensation import compensate_stage
from stageline.actors.deadletters import DeadLetters
from stageline.actors.decide import (
    ABANDON_GRACE_SECONDS,
    ABANDONED_ERROR,
    Begin,
    Defer,
    Drop,
    Finish,
    Forward,
    GiveUp,
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
    StageSkipped,
    StageStarted,
)
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.retry import next_delay
from stageline.actors.schedule import Scheduler
from stageline.actors.stage import ActorRegistry, StageContext, StageError, StageResult
from stageline.errors import ConcurrencyError, InvalidArgument, StagelineError
from stageline.events import keys
from stageline.events.envelope import DomainEvent, NewEvent, RecordedEvent, new_event
from stageline.events.store import AppendRequest, EventStore

log = structlog.get_logger(__name__)

# clash -> read -> decide rounds per batch; a start still unsettled then is deferred, a
# result still unsettled leaves its attempt in flight (abandoned or reconciled later)
_MAX_ROUNDS = 4
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
    events: list[NewEvent] = field(default_factory=list)
    hand_on: StageCommand | None = None  # sent once the result is recorded
    retry_at: float | None = None  # or: the same stage comes back then


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
        dead_letters: DeadLetters,
        *,
        clock: Callable[[], float] = time.time,
        abandon_grace: float = ABANDON_GRACE_SECONDS,
        max_abandoned: int | None = 5,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.actors = actors
        self.bus = bus
        self.scheduler = scheduler
        self.dead_letters = dead_letters
        self.clock = clock
        self.abandon_grace = abandon_grace
        self.max_abandoned = max_abandoned

    async def handle(self, actor: str, batch: Sequence[StageCommand]) -> None:
        """Process a batch; raises only on infrastructure failure (the batch stays pending)."""
        out = _Batch()
        # the actor's state (e.g. the ontology) first: failing to load it records nothing
        workspaces = sorted({c.workspace for c in batch})
        loaded = await asyncio.gather(*(self.actors.load(actor, ws) for ws in workspaces))
        states = dict(zip(workspaces, loaded, strict=True))
        attempts = await self._begin(actor, batch, out)
        await asyncio.gather(*(self._run(a, states) for a in attempts))
        await self._plan(attempts)
        await self._finish(attempts, out)
        await self.bus.publish(out.forwards)
        await self.scheduler.schedule(out.deferred)

    # -- start ------------------------------------------------------------------

    async def _begin(
        self, actor: str, batch: Sequence[StageCommand], out: _Batch
    ) -> list[_Attempt]:
        todo: list[tuple[StageCommand, Begin]] = [(c, Begin(c.version, c.attempt)) for c in batch]
        # workspace configs this process has not seen yet: loaded once, then dict lookups
        await self.catalog.prefetch((c.workspace, c.pipeline, c.pipeline_version) for c in batch)
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
                except (StagelineError, IndexError) as exc:  # e.g. a pipeline this worker lacks
                    await self.dead_letters.add(
                        command.workspace,
                        actor,
                        raw=commands.encode(command),
                        error=f"cannot run this command: {exc}",
                        deliveries=1,
                        command=command,
                    )
                    continue
                events = []
                if begin.abandoned is not None:
                    failed = StageFailed(
                        stage=spec.name,
                        index=command.index,
                        attempt=begin.abandoned,
                        error_type=ABANDONED_ERROR,
                        error=ABANDONED,
                        will_retry=True,
                    )
                    events.append(self._event(failed, command))
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
                    attempt=command.attempt,
                    now=self.clock(),
                    timeout=spec.timeout_seconds,
                    grace=self.abandon_grace,
                    max_abandoned=self.max_abandoned,
                )
                if isinstance(decision, Begin):
                    todo.append((command, decision))
                elif isinstance(decision, GiveUp):
                    # not run: its result is the lost attempt's failure, the stage's last
                    attempts.append(
                        _Attempt(
                            command,
                            pipeline,
                            spec,
                            decision.attempt,
                            decision.version,
                            decision.started_id or "",
                            outcome=AttemptAbandoned(ABANDONED),
                        )
                    )
                elif isinstance(decision, Defer):
                    out.deferred.append(
                        (decision.until, keys.stage_channel(actor), commands.encode(command))
                    )
                else:
                    self._settle(command, pipeline, decision, out)
        for command, _ in todo:  # the run kept moving under us: look again shortly
            log.info("stage.start_unsettled", **_context(command))
            out.deferred.append(
                (self.clock() + 1.0, keys.stage_channel(actor), commands.encode(command))
            )
        return attempts

    # -- run --------------------------------------------------------------------

    async def _run(self, a: _Attempt, states: dict[str, Any]) -> None:
        if a.outcome is not None:  # decided without running (a lost last attempt)
            return
        c = a.command
        started = time.perf_counter()
        try:
            async with asyncio.timeout(a.spec.timeout_seconds):
                ctx = StageContext(
                    c.workspace,
                    c.run_id,
                    a.spec.name,
                    a.attempt,
                    a.spec.params,
                    c.correlation_id,
                    states.get(c.workspace),
                )
                a.outcome = await self.actors.call(a.spec.actor, dict(c.item), ctx)
        except TimeoutError:
            a.outcome = TimeoutError(f"stage exceeded its timeout of {a.spec.timeout_seconds}s")
        except Exception as exc:
            a.outcome = exc
        a.duration_ms = round((time.perf_counter() - started) * 1000, 3)

    # -- decide what to record --------------------------------------------------

    async def _plan(self, attempts: list[_Attempt]) -> None:
        exhausted: list[_Attempt] = []
        for a in attempts:
            if isinstance(a.outcome, StageResult):
                self._plan_success(a, a.outcome)
                continue
            given_up = isinstance(a.outcome, AttemptAbandoned)  # decided, not retried
            delay = None if given_up else next_delay(a.attempt, _permanent(a.outcome), a.spec.retry)
            if delay is None:
                exhausted.append(a)
            else:
                a.retry_at = self.clock() + delay
                a.events = [self._failed(a, will_retry=True), *self._effects(a)]
        if exhausted:
            states = await self._states([a.command for a in exhausted])
            for a, state in zip(exhausted, states, strict=True):
                self._plan_give_up(a, state)

    def _plan_success(self, a: _Attempt, result: StageResult) -> None:
        c, spec = a.command, a.spec
        completed = self._event(
            StageCompleted(
                stage=spec.name,
                index=c.index,
                attempt=a.attempt,
                duration_ms=a.duration_ms,
                output=result.output,
                metadata=result.metadata,
            ),
            c,
            a.started_id,
        )
        a.events = [completed, *(self._event(e, c, a.started_id) for e in result.events)]
        item = {**c.item, **result.output}
        self._continue_at(a, c.index + 1, item, str(completed.event_id))

    def _plan_give_up(self, a: _Attempt, state: RunState) -> None:
        c, spec = a.command, a.spec
        failed = self._failed(a, will_retry=False)
        effects = self._effects(a)
        compensations = compensate_stage(
            state,
            c.index,
            self.actors.compensator(spec.actor),
            reason="retries_exhausted",
            extra=[_recorded(e, c.workspace) for e in effects],
        )
        a.events = [failed, *effects, *(self._event(e, c, a.started_id) for e in compensations)]
        fallback = spec.retry.fallback
        if fallback is None:
            error_type, message = _describe(a.outcome)
            dead_letter = uuid.uuid4()
            a.events.append(
                self._event(
                    RunFailed(
                        stage=spec.name,
                        error_type=error_type,
                        error=message,
                        dead_letter=str(dead_letter),
                    ),
                    c,
                    str(failed.event_id),
                    event_id=dead_letter,
                )
            )
            return
        target = c.index + 1 if fallback == "skip" else a.pipeline.stage_names.index(fallback)
        skipped = self._event(
            StageSkipped(
                stage=spec.name,
                index=c.index,
                reason=f"retries exhausted; fallback {fallback}",
                next_stage=a.pipeline.stage_names[target]
                if target < len(a.pipeline.stages)
                else None,
                next_index=target,
            ),
            c,
            str(failed.event_id),
        )
        a.events.append(skipped)
        self._continue_at(a, target, dict(c.item), str(skipped.event_id))

    def _continue_at(self, a: _Attempt, index: int, item: dict[str, Any], cause: str) -> None:
        """After this attempt's events, the run goes on at ``index`` (or completes)."""
        c = a.command
        if index >= len(a.pipeline.stages):
            a.events.append(self._event(RunCompleted(), c, cause))
        else:
            a.hand_on = c.to(index, -1, item, cause)

    def _failed(self, a: _Attempt, *, will_retry: bool) -> NewEvent:
        error_type, message = _describe(a.outcome)
        return self._event(
            StageFailed(
                stage=a.spec.name,
                index=a.command.index,
                attempt=a.attempt,
                error_type=error_type,
                error=message,
                duration_ms=a.duration_ms,
                will_retry=will_retry,
                retry_at=datetime.fromtimestamp(a.retry_at, UTC)
                if will_retry and a.retry_at
                else None,
                permanent=_permanent(a.outcome),
            ),
            a.command,
            a.started_id,
        )

    def _effects(self, a: _Attempt) -> list[NewEvent]:
        """Effects a failed attempt reported before failing: recorded so they can be undone."""
        if isinstance(a.outcome, StageError):
            return [self._event(e, a.command, a.started_id) for e in a.outcome.events]
        return []

    # -- record -----------------------------------------------------------------

    async def _finish(self, attempts: list[_Attempt], out: _Batch) -> None:
        todo = [(a, a.version) for a in attempts]
        for _ in range(_MAX_ROUNDS):
            if not todo:
                return
            results = await self.store.append_batch(
                [
                    AppendRequest(
                        a.command.workspace, keys.run_stream(a.command.run_id), a.events, version
                    )
                    for a, version in todo
                ]
            )
            clashed: list[_Attempt] = []
            unstorable: list[tuple[_Attempt, int]] = []
            for (a, version), result in zip(todo, results, strict=True):
                if isinstance(result, ConcurrencyError):
                    clashed.append(a)
                elif isinstance(result, InvalidArgument):
                    # the stage's output or events cannot be stored: this attempt fails
                    # for good, the rest of the batch goes on
                    a.outcome, a.hand_on, a.retry_at = result, None, None
                    unstorable.append((a, version))
                elif isinstance(result, Exception):
                    raise result
                else:
                    self._follow_up(a, result.version, out)
            todo = []
            states = await self._states([a.command for a in clashed + [a for a, _ in unstorable]])
            for a, state in zip(clashed, states, strict=False):
                decision = decide_finish(state, a.command.index, a.attempt)
                if isinstance(decision, Finish):
                    todo.append((a, decision.version))
                else:
                    self._settle(a.command, a.pipeline, decision, out)
            for (a, version), state in zip(unstorable, states[len(clashed) :], strict=True):
                self._plan_give_up(a, state)
                todo.append((a, version))
        for a, _ in todo:
            log.warning("stage.finish_unsettled", **_context(a.command), attempt=a.attempt)

    def _follow_up(self, a: _Attempt, version: int, out: _Batch) -> None:
        c = a.command
        if a.hand_on is not None:
            nxt = a.hand_on.to(a.hand_on.index, version, a.hand_on.item, a.hand_on.cause)
            out.forwards.append((a.pipeline.stage(nxt.index).actor, nxt))
        elif a.retry_at is not None:
            retry = c.to(c.index, version, c.item, c.cause, attempt=a.attempt + 1)
            if a.retry_at <= self.clock():
                out.forwards.append((a.spec.actor, retry))
            else:
                out.deferred.append(
                    (a.retry_at, keys.stage_channel(a.spec.actor), commands.encode(retry))
                )

    # -- helpers ----------------------------------------------------------------

    def _settle(
        self, command: StageCommand, pipeline: Pipeline, decision: Drop | Forward, out: _Batch
    ) -> None:
        if isinstance(decision, Forward):
            nxt = command.to(decision.next_index, decision.version, decision.item, decision.cause)
            out.forwards.append((pipeline.stage(nxt.index).actor, nxt))
        else:
            log.debug("stage.command_dropped", reason=decision.reason, **_context(command))

    async def _states(self, batch: Sequence[StageCommand]) -> list[RunState]:
        streams = await asyncio.gather(
            *(self.store.read_stream(c.workspace, keys.run_stream(c.run_id)) for c in batch)
        )
        return [fold_run(events) for events in streams]

    @staticmethod
    def _event(
        payload: DomainEvent,
        command: StageCommand,
        cause: str | None = None,
        *,
        event_id: uuid.UUID | None = None,
    ) -> NewEvent:
        return new_event(
            payload,
            event_id=event_id,
            correlation_id=command.correlation_id,
            causation_id=cause if cause is not None else command.cause,
        )


ABANDONED = "no result within the stage timeout; worker presumed lost"


class AttemptAbandoned(Exception):  # its name is decide.ABANDONED_ERROR
    """Attempts of a stage kept being lost with their workers: the stage gave up."""


def _permanent(outcome: object) -> bool:
    """Whether a failure can never succeed on retry (unstorable output never will)."""
    if isinstance(outcome, StageError):
        return outcome.permanent
    return isinstance(outcome, InvalidArgument)


def _describe(outcome: object) -> tuple[str, str]:
    error = outcome if isinstance(outcome, BaseException) else RuntimeError("no outcome")
    return type(error).__name__, str(error)[:_MAX_ERROR_CHARS]


def _recorded(event: NewEvent, workspace: str) -> RecordedEvent:
    """A not-yet-appended effect, shaped like a recorded one for compensators."""
    data = event.data if isinstance(event.data, dict) else msgspec.to_builtins(event.data)
    return RecordedEvent(
        event_id=event.event_id,
        type=event.type,
        schema_version=event.schema_version,
        stream="",
        version=-1,
        position=0,
        workspace=workspace,
        occurred_at=event.occurred_at,
        recorded_at=event.occurred_at,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        data=data,
    )


def _context(command: StageCommand) -> dict[str, Any]:
    return {
        "workspace": command.workspace,
        "run_id": command.run_id,
        "stage_index": command.index,
        "correlation_id": command.correlation_id,
    }
