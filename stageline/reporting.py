"""The run reporter: a run of the caller's own pipeline, recorded in stageline as it goes.

``Stageline.report`` (``AsyncStageline.report``) gives a ``RunReport``
(``AsyncRunReport``), which records the run as a stageline run stream (``run-<id>``:
``RunSubmitted``, ``StageStarted``, ``StageCompleted`` or ``StageFailed``,
``RunCompleted`` or ``RunFailed``), so it shows in ``/v1/runs``, ``/v1/runs/stats``
and the log like any run. Such a run is recorded at ``pipeline_version`` 0, a version
no pipeline has (configs and built-ins start at 1), so stageline's workers and
reconciler never drive it, whatever its pipeline is called. A report makes its appends
one at a time, so its stages may run concurrently (threads, ``asyncio.gather``).
Reporting stays off the caller's critical path: while stageline cannot be reached, a
report holds what it could not send (in order, with each event's own id and time) and
sends it with its next report, the caller's code going on; a report of a run id that
exists carries that run on from where its stream stands. A reported stage (or run)
whose ``output`` or ``metadata`` holds a value JSON cannot hold is recorded as failed
with that reason, and the error raised.

Its requests are made by the client it was given (``stageline/client.py``), with the
client's retries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from stageline.client import (
    ApiError,
    AsyncStageline,
    Expected,
    Stageline,
    Unreachable,
    VersionConflict,
    _Client,
    to_json,
)
from stageline.errors import StagelineError

__all__ = [
    "ABANDONED_ERROR",
    "MAX_ERROR_CHARS",
    "MAX_HELD",
    "REPORTED_VERSION",
    "AsyncRunReport",
    "CannotResume",
    "RunReport",
    "Stage",
]


REPORTED_VERSION = 0
"""The ``pipeline_version`` of a reported run: none of stageline's pipelines has it."""

MAX_ERROR_CHARS = 2000
"""A reported error's text is cut to this many characters, as stageline's own stages cut
theirs (a whole traceback-sized message could exceed the API's body limit, leaving the
failure unrecorded)."""


# the client's logger, as when the reporter was part of the client: its warnings keep
# the name users' logging configs (and the tests) filter on
log = logging.getLogger("stageline.client")


def _refused(what: str, value: Any) -> TypeError | ValueError | None:
    """Why ``value`` cannot be recorded as ``what``, or None if it can."""
    try:
        to_json(value)
    except (TypeError, ValueError) as exc:
        return type(exc)(f"{what} cannot be recorded: {exc}")
    return None


MAX_HELD = 1000
"""Most appends a report holds while stageline cannot be reached. Past them its later
reports are dropped, so the held ones stay a beginning of the run the server can take."""

ABANDONED_ERROR = "AttemptAbandoned"
"""A lost attempt's ``error_type``, as stageline records its own (``decide.ABANDONED_ERROR``)."""

_ENDINGS = frozenset({"RunCompleted", "RunFailed", "RunCancelled", "RunCompensated"})


class CannotResume(StagelineError):
    """A report's ``run_id`` names a run it cannot carry on: one that has ended, or a run of
    another pipeline (or stages, or of stageline's own)."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _event(type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event of a report with its own id and time, so sent again later it is the same
    event, written once."""
    return {"type": type, "data": data, "event_id": str(uuid.uuid4()), "occurred_at": _now()}


def _error(exc: BaseException) -> dict[str, str]:
    return {"error_type": type(exc).__name__, "error": (str(exc) or repr(exc))[:MAX_ERROR_CHARS]}


def _unavailable(failure: ApiError) -> bool:
    """``failure`` says stageline cannot be reached now (not that it refused the request)."""
    return isinstance(failure, Unreachable) or failure.status == 503


@dataclass
class _Standing:
    """Where a run's stream stands, as a report carrying the run on needs to know it."""

    version: int = -1
    position: int | None = None
    submitted: Mapping[str, Any] = field(default_factory=dict)
    """Its ``RunSubmitted``'s data."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Each started stage's last attempt."""
    running: dict[tuple[str, int], Mapping[str, Any]] = field(default_factory=dict)
    """The ``StageStarted`` data of each attempt (stage, attempt) that did not end."""
    ending: str | None = None


def _standing(events: Sequence[Mapping[str, Any]]) -> _Standing:
    """Fold a run stream's events (as the API serves them) into where it stands."""
    s = _Standing()
    for e in events:
        t, d = e["type"], e["data"]
        s.version, s.position = e["version"], e["position"]
        if t == "RunSubmitted" and not s.submitted:
            s.submitted = d
        elif t == "StageStarted":
            s.attempts[d["stage"]] = max(s.attempts.get(d["stage"], 0), d["attempt"])
            s.running[d["stage"], d["attempt"]] = d
        elif t in ("StageCompleted", "StageFailed"):
            s.running.pop((d["stage"], d["attempt"]), None)
        elif t in _ENDINGS:
            s.ending = t
        elif t == "RunRetried":
            s.ending = None
    return s


def _renumbered(event: dict[str, Any], earlier: Mapping[str, int]) -> dict[str, Any]:
    """A stage event of a report numbered after the attempts ``earlier`` reporters made."""
    data = event["data"]
    if "attempt" not in data:
        return event
    return {**event, "data": {**data, "attempt": data["attempt"] + earlier.get(data["stage"], 0)}}


class Stage:
    """One attempt of a reported stage. Put what it produced in ``output`` (kept in the
    log) and ``metadata`` (shown in the run's view too); both are recorded as it ends."""

    def __init__(self, run: _Report, name: str) -> None:
        self.name = name
        self.index = run.stages.index(name)
        self.output: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}
        self._run = run
        self._attempt = run.attempts.get(name, 0) + 1
        self._began = 0.0

    @property
    def attempt(self) -> int:
        """Its number among the stage's attempts, those of earlier reporters of the run too."""
        return self._attempt + self._run.earlier.get(self.name, 0)

    def _started(self) -> list[dict[str, Any]]:
        # built under the report's lock: the same stage entered twice at once is two attempts
        self._attempt = self._run.attempts.get(self.name, 0) + 1
        self._began = time.perf_counter()
        return [
            _event(
                "StageStarted", {"stage": self.name, "index": self.index, "attempt": self.attempt}
            )
        ]

    def _start_recorded(self) -> None:
        self._run.attempts[self.name] = self._attempt
        self._run.at_stage = self.name

    def _ended(self, exc: BaseException | None) -> list[dict[str, Any]]:
        data = {
            "stage": self.name,
            "index": self.index,
            "attempt": self.attempt,
            "duration_ms": (time.perf_counter() - self._began) * 1000,
        }
        if exc is None:
            data.update(output=self.output, metadata=self.metadata)
            return [_event("StageCompleted", data)]
        data.update(_error(exc), permanent=True)
        return [_event("StageFailed", data)]

    def _failure(self, exc: BaseException | None) -> BaseException | None:
        """What the stage failed with: ``exc``, or why its output cannot be recorded."""
        if exc is None:
            exc = _refused(
                f"stage {self.name!r}'s output or metadata", [self.output, self.metadata]
            )
        if exc is not None:
            self._run.failures.append((exc, self.name))
        return exc

    def __enter__(self) -> Self:
        assert isinstance(self._run, RunReport), "a reported async run's stage: `async with`"
        self._run._write(self._started, recorded=self._start_recorded)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert isinstance(self._run, RunReport)
        failure = self._failure(exc)
        self._run._write(lambda: self._ended(failure), failure)
        if failure is not None and failure is not exc:  # recorded as the stage's: raised too
            raise failure

    async def __aenter__(self) -> Self:
        assert isinstance(self._run, AsyncRunReport), "a reported run's stage: `with`"
        await self._run._write(self._started, recorded=self._start_recorded)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert isinstance(self._run, AsyncRunReport)
        failure = self._failure(exc)
        await self._run._write(lambda: self._ended(failure), failure)
        if failure is not None and failure is not exc:
            raise failure


Events = Callable[[], list[dict[str, Any]]]
"""Builds the events of one append, once the report's earlier appends are done."""

Steps = Generator[dict[str, Any], Any, None]
"""Requests to send (``_Client`` calls), each sent back its answer or thrown its error."""


def _step(step: Callable[[Any], dict[str, Any]], value: Any) -> dict[str, Any] | None:
    """The next request of ``Steps`` after ``value`` (``steps.send`` or ``steps.throw``)."""
    try:
        return step(value)
    except StopIteration:
        return None


class _Report:
    """A reported run's state: its stream's version and the events each step appends.

    Its appends are made one at a time (stages may run concurrently: threads, or
    ``asyncio.gather``), each expecting the version the one before left. An append
    stageline cannot take now (not reachable, 503) is held, in order, and sent before
    the next one; the user's code goes on meanwhile. A run id whose stream exists
    already is carried on from where its stream stands.
    """

    def __init__(
        self,
        pipeline: str,
        stages: Sequence[str],
        input: Mapping[str, Any] | None,
        run_id: str | None,
    ) -> None:
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct names, at least one: {stages!r}")
        self.pipeline = pipeline
        self.stages = list(stages)
        self.input = dict(input or {})
        if (refused := _refused("the run's input", self.input)) is not None:
            raise refused
        self.run_id = run_id or uuid.uuid4().hex
        self.stream = f"run-{self.run_id}"
        self.output: dict[str, Any] = {}
        """The run's output, recorded in ``RunCompleted``."""
        self.version: int | None = None
        """The stream's version after this report's last append (None: nothing yet)."""
        self.position: int | None = None
        """The log position of its last event: a read's ``min_position`` to see it."""
        self.attempts: dict[str, int] = {}
        """Each stage's attempts in this report."""
        self.earlier: dict[str, int] = {}
        """Each stage's attempts recorded before this report (a run it carries on)."""
        self.at_stage: str | None = None
        """The stage whose start was recorded last."""
        self.failures: list[tuple[BaseException, str]] = []
        """What each failed stage raised: the run's failure names the stage it came from."""
        self._held: deque[list[dict[str, Any]]] = deque()
        """Appends not sent yet, oldest first."""
        self._dropped = 0
        self._outage: ApiError | None = None
        """Why stageline could not be reached, while appends are held."""
        self._stopped: CannotResume | None = None

    @property
    def unsent(self) -> int:
        """How many of its reports (appends) stageline has not recorded: held or dropped."""
        return len(self._held) + self._dropped

    def stage(self, name: str) -> Stage:
        """A stage of the run, one of ``stages``: started as the block begins, completed
        (or failed, if the block raises) as it ends. Again for the same name: its next attempt."""
        if name not in self.stages:
            raise ValueError(f"{name!r} is not one of the run's stages {self.stages}")
        return Stage(self, name)

    def _hold(self, events: list[dict[str, Any]]) -> bool:
        """Queue ``events`` as the next append; False if dropped (the run cannot be carried
        on, or too many are held: then every later one is dropped too)."""
        if not events:  # nothing new: the held ones are sent
            return True
        if self._stopped is not None or self._dropped or len(self._held) >= MAX_HELD:
            self._dropped += 1
            return False
        self._held.append(events)
        return True

    def _retries(self, final: bool) -> int | None:
        """Held appends are tried once per report, not with backoff, so an outage slows
        the user's code down little; the run's end tries them with the client's retries."""
        return None if final or not self._held else 0

    def _flushing(self) -> Steps:
        """Send the held appends in order."""
        while self._held:
            try:
                answer = yield _Client._append(self.stream, **self._request(self._held[0]))
            except VersionConflict as clash:
                self._carry_on((yield from self._reading()), clash)
                continue
            except ApiError as failure:
                if not _unavailable(failure):  # refused: the rest go on where it left the run
                    self._held.popleft()
                raise
            self._held.popleft()
            self._appended(answer)
        if self._outage is not None:
            log.info(
                "stageline is reachable again: run %r's held reports are recorded", self.run_id
            )
            self._outage = None

    def _reading(self) -> Generator[dict[str, Any], Any, list[dict[str, Any]]]:
        """Read the run's stream, every event."""
        events: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            page = yield _Client._stream_page(self.stream, after, 1000, False)
            events += page["events"]
            after = page["next_from_version"]
        return events

    def _request(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        expected: Expected = "no_stream" if self.version is None else self.version
        # named by its events' ids: the same request whenever it is sent again
        key = f"{events[0]['event_id']}:{expected}"
        return {"events": events, "expected_version": expected, "idempotency_key": key}

    def _appended(self, answer: Mapping[str, Any]) -> None:
        self.version, self.position = max(answer["versions"]), max(answer["positions"])

    def _carry_on(self, events: Sequence[Mapping[str, Any]], clash: VersionConflict) -> None:
        """Go on from where the run's stream (``events``) stands: its first append found the
        stream there. An attempt its last reporter left running is recorded abandoned,
        and this report's attempts are numbered after that reporter's."""
        s = _standing(events)
        if s.ending is not None:
            raise CannotResume(f"run {self.run_id!r} has ended ({s.ending})")
        if self.version is not None:  # another reporter of the run went on: refused
            self._held.popleft()
            raise clash
        theirs = [s.submitted.get(k) for k in ("pipeline", "pipeline_version", "stages")]
        if theirs != [self.pipeline, REPORTED_VERSION, self.stages]:
            raise CannotResume(
                f"run {self.run_id!r} is a run of {theirs[0]!r} (version {theirs[1]}) with "
                f"stages {theirs[2]}, not a reported run of {self.pipeline!r} with stages "
                f"{self.stages}"
            )
        self.version, self.position, self.earlier = s.version, s.position, s.attempts
        abandoned = [
            _event(
                "StageFailed",
                {
                    "stage": d["stage"],
                    "index": d["index"],
                    "attempt": d["attempt"],
                    "error_type": ABANDONED_ERROR,
                    "error": "its reporter stopped before it ended; another carried the run on",
                },
            )
            for d in s.running.values()
        ]
        later = [[_renumbered(e, s.attempts) for e in events] for events in list(self._held)[1:]]
        self._held = deque([abandoned, *later] if abandoned else later)  # not its RunSubmitted

    def _not_sent(self, failure: ApiError | CannotResume, exc: BaseException | None) -> None:
        """After ``failure``: keep the held appends if stageline cannot be reached (one
        warning), drop them if the run cannot be carried on; what stageline refused is
        raised, unless the caller's own exception ``exc`` is on its way."""
        if isinstance(failure, CannotResume):
            self._stopped, self._dropped = failure, self._dropped + len(self._held)
            self._held.clear()
        elif _unavailable(failure):
            if self._outage is None:
                log.warning(
                    "stageline cannot be reached (%s): run %r goes on, its reports held "
                    "until stageline can be reached",
                    failure,
                    self.run_id,
                )
            self._outage = failure
        elif exc is None:
            raise failure
        else:
            exc.add_note(f"stageline could not record this failure: {failure}")

    def _why_unsent(self) -> str:
        if self._stopped is not None:
            return str(self._stopped)
        if self._outage is not None:
            return f"stageline could not be reached: {self._outage}"
        return f"more than {MAX_HELD} were held while stageline could not be reached"

    def _left(self) -> None:
        """The run's block is over: warn if some of its reports are not recorded."""
        if self.unsent:
            log.warning(
                "run %r: %d report(s) not recorded (%s)",
                self.run_id,
                self.unsent,
                self._why_unsent(),
            )

    def _check_recorded(self) -> None:
        if self._stopped is not None:
            raise self._stopped
        if self.unsent:
            message = f"run {self.run_id!r}: {self.unsent} report(s) not recorded"
            raise Unreachable(None, "UNAVAILABLE", f"{message} ({self._why_unsent()})", {})

    def _started(self) -> list[dict[str, Any]]:
        data = {
            "pipeline": self.pipeline,
            "pipeline_version": REPORTED_VERSION,
            "stages": self.stages,
            "input": self.input,
        }
        return [_event("RunSubmitted", data)]

    def _ended(self, exc: BaseException | None) -> list[dict[str, Any]]:
        if exc is None:
            return [_event("RunCompleted", {"output": self.output})]
        return [_event("RunFailed", {"stage": self._stage_of(exc), **_error(exc)})]

    def _stage_of(self, exc: BaseException) -> str:
        """The stage ``exc`` (or one in it, an exception group's) came out of; else the
        stage started last (the run failed outside its stages)."""
        found = [exc]
        for error in found:  # grows as groups are opened
            if isinstance(error, BaseExceptionGroup):
                found.extend(error.exceptions)
        for error in found:
            for failed, stage in self.failures:
                if failed is error:
                    return stage
        return self.at_stage or ""

    def _refused(self) -> TypeError | ValueError | None:
        return _refused("the run's output", self.output)


class RunReport(_Report):
    """A run of an outside pipeline, recorded as it goes: ``RunSubmitted`` on entering,
    ``RunCompleted`` on leaving, ``RunFailed`` if the block raises (re-raised)."""

    def __init__(self, client: Stageline, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._lock = threading.Lock()

    def _drive(self, steps: Steps, retries: int | None) -> None:
        call = _step(steps.send, None)
        while call is not None:
            try:
                answer = self._client._send(call, retries)
            except ApiError as failure:
                call = _step(steps.throw, failure)
            else:
                call = _step(steps.send, answer)

    def _write(
        self,
        events: Events,
        exc: BaseException | None = None,
        recorded: Callable[[], None] | None = None,
        *,
        final: bool = False,
    ) -> None:
        with self._lock:
            retries = self._retries(final)
            if self._hold(events()):
                try:
                    self._drive(self._flushing(), retries)
                except (ApiError, CannotResume) as failure:
                    self._not_sent(failure, exc)
            if recorded is not None:
                recorded()

    def flush(self) -> None:
        """Send the reports held while stageline could not be reached. ``Unreachable``
        (or ``CannotResume``) if some are not recorded: for a report that must be."""
        self._write(list, final=True)
        self._check_recorded()

    def __enter__(self) -> Self:
        self._write(self._started)
        if self._stopped is not None:
            raise self._stopped
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        refused = self._refused() if exc is None else None
        self._write(lambda: self._ended(exc or refused), exc or refused, final=True)
        self._left()
        if refused is not None:
            raise refused


class AsyncRunReport(_Report):
    """``RunReport`` for asyncio: ``async with``, and ``async with run.stage(...)``."""

    def __init__(self, client: AsyncStageline, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._lock = asyncio.Lock()

    async def _drive(self, steps: Steps, retries: int | None) -> None:
        call = _step(steps.send, None)
        while call is not None:
            try:
                answer = await self._client._send(call, retries)
            except ApiError as failure:
                call = _step(steps.throw, failure)
            else:
                call = _step(steps.send, answer)

    async def _write(
        self,
        events: Events,
        exc: BaseException | None = None,
        recorded: Callable[[], None] | None = None,
        *,
        final: bool = False,
    ) -> None:
        async with self._lock:
            retries = self._retries(final)
            if self._hold(events()):
                try:
                    await self._drive(self._flushing(), retries)
                except (ApiError, CannotResume) as failure:
                    self._not_sent(failure, exc)
            if recorded is not None:
                recorded()

    async def flush(self) -> None:
        """See ``RunReport.flush``."""
        await self._write(list, final=True)
        self._check_recorded()

    async def __aenter__(self) -> Self:
        await self._write(self._started)
        if self._stopped is not None:
            raise self._stopped
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        refused = self._refused() if exc is None else None
        await self._write(lambda: self._ended(exc or refused), exc or refused, final=True)
        self._left()
        if refused is not None:
            raise refused
