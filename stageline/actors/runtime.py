"""Turns a batch of stage commands into events: start, run, record, hand on.

Every transition is appended with the run's expected version, so a duplicated
or redelivered command can never record a transition twice; a clash is
resolved by reading the run and asking ``decide``. A marked stage's
``StageStarted`` is appended before it runs; an unmarked one's goes with its
result, in one append, and if the run moved meanwhile the result is dropped
and the command decided like a start that clashed (when it is still to run,
it starts again, marked). A failed attempt is retried later through the
durable scheduler, never slept on; when retries are spent the stage's effects
are compensated and its fallback applies. The batch's entries are acknowledged
in the step that hands its runs on: with an outbox (the channels on the store's
server), a result's own append hands its run on and acknowledges its command;
what is left goes in one step at the end of the batch. A batch cut off by its
worker's stop records the attempts it drops as abandoned and hands them on, to be
started again at once, in the step that sends what its other attempts hand on. What
each attempt records is planned by the pure functions of ``stageline.actors.attempt``;
this module does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from stageline.actors import commands
from stageline.actors.attempt import (
    ABANDONED,
    INTERRUPTED,
    Attempt,
    AttemptAbandoned,
    abandoned_event,
    check_outcome,
    plan_give_up,
    plan_retry,
    plan_stopped,
    plan_success,
    retry_delay,
    started_event,
)
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.compensation import CompensationFailed
from stageline.actors.deadletters import DeadLetters, entry_dead_letter_id
from stageline.actors.decide import (
    ABANDON_GRACE_SECONDS,
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
    lost_too_often,
)
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.actors.stops import Running
from stageline.errors import ConcurrencyError, InvalidArgument, InvalidEvent, StagelineError
from stageline.events import keys
from stageline.events.envelope import NewEvent
from stageline.events.store import AppendRequest, EventStore, Outbox

log = structlog.get_logger(__name__)

HOLD_S = 0.5
"""Longest an attempt's result waits for the rest of its batch's to be recorded with them."""
CUT_OFF_S = 1.0
"""Longest the attempts a stopped batch drops take to be recorded abandoned (one append)."""
# clash -> read -> decide rounds per batch; a start still unsettled then is deferred, a
# result still unsettled leaves its attempt in flight (abandoned or reconciled later)
_MAX_ROUNDS = 4


_Run = tuple[StageCommand, Pipeline, StageSpec]
_Start = tuple[StageCommand, Pipeline, StageSpec, Begin]


@dataclass
class _Batch:
    """What one batch leaves behind to send once its appends are done."""

    actor: str = ""
    forwards: list[tuple[str, StageCommand]] = field(default_factory=list)
    deferred: list[tuple[float, str, bytes]] = field(default_factory=list)
    entries: dict[int, bytes] = field(default_factory=dict)
    """``id()`` of each command -> its entry on the actor's channel."""
    acked: set[bytes] = field(default_factory=set)
    """Entries acknowledged by the append that recorded their result."""
    settled: set[int] = field(default_factory=set)
    """``id()`` of each command done with: what follows from it is in ``forwards`` or
    ``deferred`` (or was written by its append, or nothing does), so its entry may be
    acknowledged with them, even if the batch is cut off before the rest is."""

    def put_off(self, until: float, command: StageCommand) -> None:
        """Send ``command`` back to the batch's channel at ``until``, to be decided again."""
        self.deferred.append((until, *_put_off(self.actor, command)))
        self.settled.add(id(command))

    def settled_entries(self) -> list[bytes]:
        """The entries of the commands done with that no append acknowledged."""
        return [e for i, e in self.entries.items() if i in self.settled and e not in self.acked]


class StageRuntime:
    def __init__(
        self,
        store: EventStore,
        catalog: PipelineCatalog,
        actors: ActorRegistry,
        bus: CommandBus,
        dead_letters: DeadLetters,
        *,
        clock: Callable[[], float] = time.time,
        abandon_grace: float = ABANDON_GRACE_SECONDS,
        max_abandoned: int | None = 5,
        outbox: bool = False,
    ) -> None:
        """``outbox``: the store can write the bus's channels in its appends (a Redis store on
        the broker's server), so a result's append hands its run on and acknowledges its
        command in the same atomic step, and the batch needs no round trip of its own for it.
        """
        self.store = store
        self.catalog = catalog
        self.actors = actors
        self.bus = bus
        self.dead_letters = dead_letters
        self.clock = clock
        self.abandon_grace = abandon_grace
        self.max_abandoned = max_abandoned
        self.outbox = outbox
        self.running = Running()
        """The runs of the commands in hand: a stop notice interrupts their attempts."""
        self._cut_offs: set[asyncio.Task[None]] = set()

    async def handle(
        self,
        actor: str,
        batch: Sequence[StageCommand],
        *,
        ack: Sequence[bytes] = (),
        redelivered: bool = False,
    ) -> None:
        """Process a batch; raises only on infrastructure failure (the batch stays pending).

        ``ack`` names the batch's entries on ``actor``'s channel: they are
        acknowledged in the same step that hands the runs on, never before.
        A ``redelivered`` batch (one a worker may have died on) records every
        start before running it, so a command that kills its workers is
        abandoned and given up like any lost attempt. Cancelled (the worker
        stopped), the attempts still running are recorded abandoned and handed on
        (``_cut_off``) before the cancellation goes on. While the batch is in hand, a
        notice that one of its runs stopped (``running.stop``) interrupts its attempt.
        """
        self.running.hold(batch)
        try:
            await self._handle(actor, batch, ack, redelivered)
        finally:
            self.running.release(batch)

    async def _handle(
        self, actor: str, batch: Sequence[StageCommand], ack: Sequence[bytes], redelivered: bool
    ) -> None:
        entries = dict(zip(map(id, batch), ack, strict=True)) if ack else {}
        out = _Batch(actor, entries=entries)
        # the actor's state (e.g. the ontology) first: failing to load it records nothing
        states: dict[str, Any] = {}
        if self.actors.has_state(actor):
            workspaces = sorted({c.workspace for c in batch})
            loaded = await asyncio.gather(*(self.actors.load(actor, ws) for ws in workspaces))
            states = dict(zip(workspaces, loaded, strict=True))
        attempts = await self._begin(actor, batch, ack, out, mark=redelivered)
        try:
            while attempts:
                moved: list[_Run] = []
                async with contextlib.aclosing(self._run(attempts, states)) as ended:
                    async for done in ended:  # recorded as they end, not held for the slowest
                        await self._plan(done)
                        moved += await self._finish(done, out)
                # unmarked attempts the run moved under: decided as a start that clashed; those
                # to begin are started with a marker this time, and run again
                todo, attempts = await self._decide_start(moved, out)
                attempts += await self._start(todo, out)
        except asyncio.CancelledError:
            await self._cut_off(actor, [a for a in attempts if a.outcome is None], out)
            raise
        unacked = [e for e in ack if e not in out.acked] if out.acked else ack
        await self.bus.publish(out.forwards, scheduled=out.deferred, ack=(actor, unacked))

    # -- start ------------------------------------------------------------------

    async def _begin(
        self,
        actor: str,
        batch: Sequence[StageCommand],
        ack: Sequence[bytes],
        out: _Batch,
        *,
        mark: bool,
    ) -> list[Attempt]:
        """The batch's attempts: unmarked ones as they are, marked ones once their start is
        recorded (or decided otherwise). A command no pipeline here runs is dead-lettered,
        once per entry of ``ack``."""
        # workspace configs this process has not seen yet: loaded once, then dict lookups
        await self.catalog.prefetch((c.workspace, c.pipeline, c.pipeline_version) for c in batch)
        attempts: list[Attempt] = []
        todo: list[_Start] = []
        entries: Sequence[bytes | None] = ack or [None] * len(batch)
        for command, entry in zip(batch, entries, strict=True):
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
                    dead_letter_id=entry_dead_letter_id(actor, entry) if entry else None,
                )
                out.settled.add(id(command))
                continue
            if mark or command.mark_start or self.actors.marks_start(spec.actor):
                begin = Begin(command.version, command.attempt, lost=command.lost)
                todo.append((command, pipeline, spec, begin))
                continue
            # recorded with the result, in one append at the command's version
            started = started_event(command, spec, command.attempt)
            attempts.append(
                Attempt(
                    command,
                    pipeline,
                    spec,
                    command.attempt,
                    command.version,
                    str(started.event_id),
                    opening=[started],
                    lost=command.lost,
                )
            )
        return attempts + await self._start(todo, out)

    async def _start(self, todo: list[_Start], out: _Batch) -> list[Attempt]:
        """Append each attempt's ``StageStarted``; returns the attempts to run (or decided)."""
        attempts: list[Attempt] = []
        for _ in range(_MAX_ROUNDS):
            if not todo:
                break
            prepared: list[tuple[_Start, NewEvent]] = []
            requests: list[AppendRequest] = []
            for command, pipeline, spec, begin in todo:
                events = []
                if begin.abandoned is not None:  # the attempt that starts follows from it
                    events.append(abandoned_event(command, spec, begin.abandoned))
                cause = str(events[0].event_id) if events else None
                started = started_event(command, spec, begin.attempt, cause)
                events.append(started)
                prepared.append(((command, pipeline, spec, begin), started))
                requests.append(
                    AppendRequest(
                        command.workspace, keys.run_stream(command.run_id), events, begin.version
                    )
                )
            results = await self.store.append_batch(requests)
            clashed: list[_Run] = []
            for ((command, pipeline, spec, begin), started), result in zip(
                prepared, results, strict=True
            ):
                if isinstance(result, ConcurrencyError):
                    clashed.append((command, pipeline, spec))
                elif isinstance(result, Exception):
                    raise result
                else:
                    attempts.append(
                        Attempt(
                            command,
                            pipeline,
                            spec,
                            begin.attempt,
                            result.version,
                            str(started.event_id),
                            lost=begin.lost,
                        )
                    )
            todo, decided = await self._decide_start(clashed, out)
            attempts += decided
        for command, *_ in todo:  # the run kept moving under us: look again shortly
            log.info("stage.start_unsettled", **_context(command))
            out.put_off(self.clock() + 1.0, command)
        return attempts

    async def _decide_start(
        self, clashed: list[_Run], out: _Batch
    ) -> tuple[list[_Start], list[Attempt]]:
        """Read the runs the commands found moved on: the starts to try again, and the
        attempts decided without running."""
        todo: list[_Start] = []
        decided: list[Attempt] = []
        if not clashed:
            return todo, decided
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
                todo.append((command, pipeline, spec, decision))
            elif isinstance(decision, GiveUp):
                # not run: its result is the lost attempt's failure, the stage's last
                decided.append(
                    Attempt(
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
                out.put_off(decision.until, command)
            else:
                self._settle(command, pipeline, decision, out)
        return todo, decided

    # -- run --------------------------------------------------------------------

    async def _run(
        self, attempts: list[Attempt], states: dict[str, Any]
    ) -> AsyncGenerator[list[Attempt], None]:
        """Run each attempt's stage: plain functions in turn, coroutines concurrently; yields
        the attempts as they end, in groups, so that no result waits more than ``HOLD_S``
        for the rest of its batch (all of them at once when the batch is quick).

        A plain function holds the event loop until it returns, so no timeout
        could interrupt it; only what a stage returns to await runs under one.
        """
        ended: list[Attempt] = []
        waiting: dict[asyncio.Task[None], Attempt] = {}
        for a in attempts:
            c = a.command
            # decided without running (a lost last attempt), or its run stopped meanwhile
            if a.outcome is not None or self.running.stopped(c):
                ended.append(a)
                continue
            ctx = StageContext(
                c.workspace,
                c.run_id,
                a.spec.name,
                a.attempt,
                a.spec.params,
                c.correlation_id,
                states.get(c.workspace),
            )
            started = time.perf_counter()
            result: StageResult | Awaitable[StageResult] | Exception
            try:
                result = self.actors.function(a.spec.actor)(dict(c.item), ctx)
            except Exception as exc:
                result = exc
            if not isinstance(result, StageResult) and inspect.isawaitable(result):
                task = asyncio.ensure_future(self._wait(a, result, started))
                waiting[task] = a
                self.running.started(c, task)
                continue
            a.outcome = result
            a.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            ended.append(a)
        pending = set(waiting)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=HOLD_S)
                ended += (waiting[task] for task in done)
                if ended:
                    yield ended
                    ended = []
        finally:  # stopped (cancelled) meanwhile: the attempts still running go with it
            for task in pending:
                task.cancel()
        if ended:
            yield ended

    @staticmethod
    async def _wait(a: Attempt, result: Awaitable[StageResult], started: float) -> None:
        """Await a stage under its timeout into ``a.outcome``.

        A stage may swallow the ``CancelledError`` that cuts it off and return: what it
        returns then is not its result. Cut off by its timeout, it failed by timing out;
        cut off because the batch was stopped, or because its run stopped (a stop notice),
        this task ends cancelled, as it would had the stage let the cancellation through,
        and what it returned is dropped.
        """
        outcome: StageResult | Exception
        limit = asyncio.timeout(a.spec.timeout_seconds)
        try:
            async with limit:
                outcome = await result
        except Exception as exc:
            outcome = exc
        # expired: whatever the stage made of the cancellation that cut it off, it timed out
        if limit.expired() or isinstance(outcome, TimeoutError):
            outcome = TimeoutError(f"stage exceeded its timeout of {a.spec.timeout_seconds}s")
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # stopped, and the stage swallowed it
        a.outcome = outcome
        a.duration_ms = round((time.perf_counter() - started) * 1000, 3)

    # -- decide what to record --------------------------------------------------

    async def _plan(self, attempts: list[Attempt]) -> None:
        exhausted: list[Attempt] = []
        for a in attempts:
            if a.outcome is None and self.running.stopped(a.command):
                # interrupted, or never begun: its run was cancelled or undone, so this
                # append clashes with the run's end and records nothing (the command is
                # dropped); had the run gone on after all, the attempt is abandoned and
                # the next one starts at once, as when a worker stops
                plan_stopped(a, self.clock(), INTERRUPTED)
                continue
            check_outcome(a)
            if isinstance(a.outcome, StageResult):
                plan_success(a, a.outcome)
                continue
            delay = retry_delay(a)
            if delay is None:
                exhausted.append(a)
            else:
                plan_retry(a, self.clock() + delay)
        if exhausted:
            states = await self._states([a.command for a in exhausted])
            for a, state in zip(exhausted, states, strict=True):
                self._plan_give_up(a, state)

    def _plan_give_up(
        self, a: Attempt, state: RunState, *, uncompensated: CompensationFailed | None = None
    ) -> None:
        compensator = self.actors.compensator(a.spec.actor)
        plan_give_up(a, state, compensator, uncompensated=uncompensated)

    # -- record -----------------------------------------------------------------

    async def _finish(self, attempts: list[Attempt], out: _Batch) -> list[_Run]:
        """Append each attempt's result; returns the unmarked attempts the run moved under."""
        moved: list[_Run] = []
        todo = [(a, a.version) for a in attempts]
        for _ in range(_MAX_ROUNDS):
            if not todo:
                return moved
            requests = [self._request(a, version, out) for a, version in todo]
            replies = iter(
                await self.store.append_batch([r for r in requests if isinstance(r, AppendRequest)])
            )
            results = [next(replies) if isinstance(r, AppendRequest) else r for r in requests]
            clashed: list[Attempt] = []
            unstorable: list[tuple[Attempt, int, InvalidArgument]] = []
            for (a, version), request, result in zip(todo, requests, results, strict=True):
                if isinstance(result, ConcurrencyError):
                    if a.opening:  # never started: its result describes nothing recorded
                        moved.append((a.command, a.pipeline, a.spec))
                    else:
                        clashed.append(a)
                elif isinstance(result, InvalidArgument):
                    unstorable.append((a, version, result))
                elif isinstance(result, Exception):
                    raise result
                elif isinstance(request, AppendRequest):  # (one never made is its own error)
                    self._recorded(a, request, result.version, out)
            todo = []
            states = await self._states(
                [a.command for a in [*clashed, *(u[0] for u in unstorable)]]
            )
            for a, state in zip(clashed, states, strict=False):
                decision = decide_finish(state, a.command.index, a.attempt)
                if isinstance(decision, Finish):
                    todo.append((a, decision.version))
                else:
                    self._settle(a.command, a.pipeline, decision, out)
            for (a, version, error), state in zip(unstorable, states[len(clashed) :], strict=True):
                if a.compensating:
                    # a give-up whose compensating events may be what cannot be stored:
                    # recorded without them first, the stage's own failure kept
                    failure = CompensationFailed(a.spec.name, type(error).__name__, error.message)
                    self._plan_give_up(a, state, uncompensated=failure)
                else:
                    # the stage's output or events cannot be stored: this attempt fails
                    # for good, the rest of the batch goes on
                    a.outcome, a.hand_on, a.retry_at = error, None, None
                    self._plan_give_up(a, state)
                todo.append((a, version))
        for a, _ in todo:  # left in flight, as if lost: abandoned or reconciled later
            log.warning("stage.finish_unsettled", **_context(a.command), attempt=a.attempt)
            out.settled.add(id(a.command))
        return moved

    def _request(self, a: Attempt, version: int, out: _Batch) -> AppendRequest | InvalidEvent:
        """The append of ``a``'s result at ``version``, or why it cannot be: the command
        handing its run on holds something that cannot be encoded (the stage's output)."""
        try:
            outbox = self._outbox(a, version, out)
        except (TypeError, ValueError, OverflowError) as exc:  # as codec.encode says it
            return InvalidEvent(
                f"stage output cannot be handed on to the next stage: {exc}", stage=a.spec.name
            )
        return AppendRequest(
            a.command.workspace,
            keys.run_stream(a.command.run_id),
            a.opening + a.events,
            version,
            outbox,
        )

    def _outbox(self, a: Attempt, version: int, out: _Batch) -> Outbox | None:
        """What the append of ``a``'s result at ``version`` writes with it when every event
        is new: the command handing its run on, and the acknowledgement of its own. None when
        the store cannot, or when the attempt's follow-up waits in the scheduler."""
        entry = out.entries.get(id(a.command))
        if not self.outbox or entry is None or version < 0:
            return None
        follow = _Batch()
        self._follow_up(a, version + len(a.opening) + len(a.events), follow)
        if follow.deferred:
            return None
        return Outbox(
            [(keys.stage_channel(n), commands.encode(c)) for n, c in follow.forwards],
            maxlen=self.bus.maxlen,
            ack=(keys.stage_channel(out.actor), keys.stage_group(out.actor), entry),
        )

    def _recorded(self, a: Attempt, request: AppendRequest, version: int, out: _Batch) -> None:
        """``request`` recorded ``a``'s result, its run now at ``version``: what follows was
        handed on by the append's outbox, if it wrote it, or goes with the batch."""
        outbox = request.outbox
        # every event new, so the outbox was written (see append.lua)
        if outbox is not None and version == request.expected_version + len(request.events):
            if outbox.ack is not None:
                out.acked.add(outbox.ack[2])
        else:
            self._follow_up(a, version, out)
        out.settled.add(id(a.command))

    def _follow_up(self, a: Attempt, version: int, out: _Batch) -> None:
        c = a.command
        if a.hand_on is not None:
            nxt = a.hand_on.to(a.hand_on.index, version, a.hand_on.item, a.hand_on.cause)
            out.forwards.append((a.pipeline.stage(nxt.index).actor, nxt))
        elif a.retry_at is not None:
            failed = str(a.events[0].event_id)  # plan_retry's StageFailed: the retry's cause
            # an abandoned attempt is lost with its worker: not one of the stage's failures
            lost = a.lost + isinstance(a.outcome, AttemptAbandoned)
            retry = c.to(c.index, version, c.item, failed, attempt=a.attempt + 1, lost=lost)
            if a.retry_at <= self.clock():
                out.forwards.append((a.spec.actor, retry))
            else:
                out.deferred.append(
                    (a.retry_at, keys.stage_channel(a.spec.actor), commands.encode(retry))
                )

    # -- cut off ----------------------------------------------------------------

    async def _cut_off(self, actor: str, dropped: list[Attempt], out: _Batch) -> None:
        """Record the attempts a stopping worker drops, still running, as abandoned, and
        hand each one's next attempt on at once, rather than leave them pending to be
        claimed and presumed lost after their timeout; and send what the batch's other
        commands hand on (``out``) with them, rather than leave those pending too.

        Recorded apart from the batch, which a stopping worker may cancel again; so
        ``cut_offs()`` waits for it. A stage whose attempts were lost too often
        (``lost_too_often``), this one included, is left as before: presumed lost, it
        gives up.
        """
        dropped = [a for a in dropped if not lost_too_often(a.lost, self.max_abandoned)]
        if not (dropped or out.forwards or out.deferred or out.settled_entries()):
            return
        recording = asyncio.ensure_future(self._abandon(actor, dropped, out))
        self._cut_offs.add(recording)
        recording.add_done_callback(self._cut_offs.discard)
        with contextlib.suppress(asyncio.CancelledError):  # cancelled again: it goes on
            await asyncio.shield(recording)

    async def _abandon(self, actor: str, dropped: list[Attempt], out: _Batch) -> None:
        """Append each dropped attempt's ``StageFailed`` at the version its attempt holds;
        then, in one step, hand on the next attempts and all the batch has collected, and
        acknowledge the entries of the commands it is done with (with an outbox, a dropped
        attempt's own append does both for it). A run that moved meanwhile (cancelled, or
        the attempt's result recorded) clashes and is left as it is. A server that fails
        or is slower than ``CUT_OFF_S`` leaves the entries pending, as before: claimed,
        each command is decided again from its run (a dropped attempt presumed lost or,
        if its failure was recorded, retried)."""
        now = self.clock()
        todo: list[tuple[Attempt, AppendRequest]] = []
        for a in dropped:
            plan_stopped(a, now)
            request = self._request(a, a.version, out)
            if isinstance(request, AppendRequest):  # its command was decoded: it encodes
                todo.append((a, request))
        try:
            async with asyncio.timeout(CUT_OFF_S):
                results = await self.store.append_batch([r for _, r in todo]) if todo else []
                for (a, request), result in zip(todo, results, strict=True):
                    if isinstance(result, Exception):  # a clash: the run moved, let it be
                        said = log.info if isinstance(result, ConcurrencyError) else log.warning
                        said("stage.stop_unrecorded", **_context(a.command), error=str(result))
                        continue
                    log.info("stage.abandoned_on_stop", **_context(a.command), attempt=a.attempt)
                    self._recorded(a, request, result.version, out)
                await self.bus.publish(
                    out.forwards, scheduled=out.deferred, ack=(actor, out.settled_entries())
                )
        except Exception as exc:  # as before the cut-off: claimed later, presumed lost
            log.warning(
                "stage.stop_unrecorded",
                actor=actor,
                attempts=len(dropped),
                error=f"{type(exc).__name__}: {exc}",
            )

    async def cut_offs(self) -> None:
        """Wait for the attempts dropped by cancelled batches to be recorded (``_cut_off``),
        each within ``CUT_OFF_S``."""
        if self._cut_offs:
            await asyncio.wait(self._cut_offs)

    # -- helpers ----------------------------------------------------------------

    def _settle(
        self, command: StageCommand, pipeline: Pipeline, decision: Drop | Forward, out: _Batch
    ) -> None:
        if isinstance(decision, Forward):
            nxt = command.to(decision.next_index, decision.version, decision.item, decision.cause)
            out.forwards.append((pipeline.stage(nxt.index).actor, nxt))
        else:
            log.debug("stage.command_dropped", reason=decision.reason, **_context(command))
        out.settled.add(id(command))

    async def _states(self, batch: Sequence[StageCommand]) -> list[RunState]:
        streams = await asyncio.gather(
            *(self.store.read_stream(c.workspace, keys.run_stream(c.run_id)) for c in batch)
        )
        return [fold_run(events) for events in streams]


def _context(command: StageCommand) -> dict[str, Any]:
    return {
        "workspace": command.workspace,
        "run_id": command.run_id,
        "stage_index": command.index,
        "correlation_id": command.correlation_id,
    }


def _put_off(actor: str, command: StageCommand) -> tuple[str, bytes]:
    """Where a command put off after its start clashed goes back, and its payload: marked,
    since the attempt it waits for may be one that crashed a worker."""
    return keys.stage_channel(actor), commands.encode(
        msgspec.structs.replace(command, mark_start=True)
    )
