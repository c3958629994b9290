"""A client of the stageline HTTP API, and a reporter of the stages of pipelines run elsewhere.

``Stageline`` (blocking) and ``AsyncStageline`` append events, submit runs and
read them. ``report`` records a run of the caller's own pipeline as a stageline
run stream (``run-<id>``: ``RunSubmitted``, ``StageStarted``, ``StageCompleted``
or ``StageFailed``, ``RunCompleted`` or ``RunFailed``), so it shows in
``/v1/runs``, ``/v1/runs/stats`` and the log like any run. Such a run is
recorded at ``pipeline_version`` 0, a version no pipeline has (configs and
built-ins start at 1), so stageline's workers and reconciler never drive it,
whatever its pipeline is called. A report makes its appends one at a time, so its
stages may run concurrently (threads, ``asyncio.gather``).

Every write carries an ``Idempotency-Key`` (one per call unless given), so
connection errors and 503 answers are retried, with backoff, without ever
writing an event twice. Any other error answer is raised as ``ApiError``.

Bodies are encoded as JSON here (``to_json``): datetimes, dates, UUIDs, Decimals
and paths as text, as the server writes them. A value JSON cannot hold (``NaN``,
an infinity, an object of another type) raises ``TypeError`` or ``ValueError``
before anything is sent; a reported stage (or run) whose ``output`` or
``metadata`` holds one is recorded as failed with that reason, and the error raised.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import PurePath
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from stageline.errors import StagelineError

__all__ = [
    "MAX_ERROR_CHARS",
    "REPORTED_VERSION",
    "ApiError",
    "AsyncRunReport",
    "AsyncStageline",
    "RunReport",
    "Stage",
    "Stageline",
    "Unreachable",
    "VersionConflict",
    "next_delay",
    "path_segment",
    "to_json",
]

REPORTED_VERSION = 0
"""The ``pipeline_version`` of a reported run: none of stageline's pipelines has it."""

MAX_ERROR_CHARS = 2000
"""A reported error's text is cut to this many characters, as stageline's own stages cut
theirs (a whole traceback-sized message could exceed the API's body limit, leaving the
failure unrecorded)."""

Expected = int | Literal["any", "no_stream"]
_JSON = {"Content-Type": "application/json"}
Outcome = httpx.Response | httpx.TransportError


class ApiError(StagelineError):
    """An error answer of the API: its ``status``, and ``code``, ``message``, ``details``
    from its ``{"error": {...}}`` envelope."""

    def __init__(
        self, status: int | None, code: str, message: str, details: Mapping[str, Any]
    ) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details)

    def __str__(self) -> str:
        return f"{self.status or '-'} {self.code}: {super().__str__()}"


class VersionConflict(ApiError):
    """A 409 version clash: the stream is at ``actual_version``, not the version expected."""

    @property
    def actual_version(self) -> int | None:
        actual = self.details.get("actual_version")
        return actual if isinstance(actual, int) else None


class Unreachable(ApiError):
    """The API could not be reached, or dropped the connection, on every attempt."""


def next_delay(
    attempt: int, outcome: Outcome, *, retries: int = 3, backoff: float = 0.1
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None not to retry ``outcome``.

    Retried: connection errors and timeouts, and 503 (honouring its ``Retry-After``, up
    to 5 s). Safe for every call: reads change nothing, and writes carry an
    Idempotency-Key, so one that reached the server is not applied again.
    """
    if attempt > retries:
        return None
    delay = backoff * 2 ** (attempt - 1)
    if isinstance(outcome, httpx.TransportError):
        return delay
    if outcome.status_code != 503:
        return None
    return max(delay, min(_retry_after(outcome.headers.get("Retry-After")), 5.0))


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        try:
            return (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return 0.0


def _text(value: Any) -> str:
    if isinstance(value, date | time_of_day):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON: {value!r}"[:300])


def path_segment(value: str) -> str:
    """``value`` (an id or a name) as one segment of a URL path: every character but
    letters, digits and ``_.-~`` percent-encoded, and ``.`` or ``..`` too, which a URL
    would otherwise resolve, so it can only ever name the resource it is put in."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in {".", ".."} else segment


def to_json(value: Any) -> bytes:
    """``value`` as a request body: ``TypeError`` or ``ValueError`` for what JSON cannot hold."""
    try:
        text = json.dumps(
            value, default=_text, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
    except ValueError as exc:  # the stdlib's says only "Out of range float values ..."
        raise ValueError(f"NaN and infinities cannot be sent as JSON ({exc})") from None
    return text.encode()


def _refused(what: str, value: Any) -> TypeError | ValueError | None:
    """Why ``value`` cannot be recorded as ``what``, or None if it can."""
    try:
        to_json(value)
    except (TypeError, ValueError) as exc:
        return type(exc)(f"{what} cannot be recorded: {exc}")
    return None


def _answer(outcome: Outcome) -> Any:
    """The JSON of a successful answer; ``ApiError`` (or a subclass) otherwise."""
    if isinstance(outcome, httpx.TransportError):
        raise Unreachable(None, "UNAVAILABLE", f"{type(outcome).__name__}: {outcome}", {})
    if outcome.is_success:
        return outcome.json()
    try:
        error = outcome.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details") or {}
    except (ValueError, KeyError, TypeError):  # not the API's envelope (a proxy's page)
        code, message, details = "HTTP_ERROR", outcome.text[:500] or outcome.reason_phrase, {}
    kind = (
        VersionConflict if outcome.status_code == 409 and "actual_version" in details else ApiError
    )
    raise kind(outcome.status_code, code, message, details)


class _Client:
    """What both clients share: the requests they make, built without I/O."""

    def __init__(self, url: str, workspace: str | None, *, retries: int, backoff: float) -> None:
        self.url = url.rstrip("/")
        self.workspace = workspace
        self.retries = retries
        self.backoff = backoff

    def _headers(self) -> dict[str, str]:
        return {"X-Workspace": self.workspace} if self.workspace else {}

    def _delay(self, attempt: int, outcome: Outcome) -> float | None:
        return next_delay(attempt, outcome, retries=self.retries, backoff=self.backoff)

    @staticmethod
    def _append(
        stream: str,
        events: Sequence[Mapping[str, Any]],
        expected_version: Expected,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"/v1/streams/{path_segment(stream)}/events",
            "content": to_json({"expected_version": expected_version, "events": list(events)}),
            "headers": {**_JSON, "Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        }

    @staticmethod
    def _submit(
        pipeline: str,
        input: Mapping[str, Any],
        wait: float | None,
        idempotency_key: str | None,
        timeout: float,
    ) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": "/v1/runs",
            "content": to_json({"pipeline": pipeline, "input": dict(input)}),
            "params": {"wait": wait} if wait is not None else {},
            "headers": {**_JSON, "Idempotency-Key": idempotency_key or uuid.uuid4().hex},
            # the answer comes once the run ended or `wait` ran out
            "timeout": timeout + wait if wait is not None else timeout,
        }

    @staticmethod
    def _run(run_id: str, min_position: int | None) -> dict[str, Any]:
        params = {"min_position": min_position} if min_position is not None else {}
        return {"method": "GET", "url": f"/v1/runs/{path_segment(run_id)}", "params": params}


class Stageline(_Client):
    """A blocking client of the API at ``url``, acting in ``workspace`` (None: the
    server's default). Use it as a context manager, or ``close()`` it."""

    def __init__(
        self,
        url: str,
        workspace: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, workspace, retries=retries, backoff=backoff)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    def _send(self, call: dict[str, Any]) -> Any:
        request = self._http.build_request(**call)
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome
            try:
                outcome = self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._delay(attempt, outcome)
            if delay is None:
                return _answer(outcome)
            time.sleep(delay)

    def append(
        self,
        stream: str,
        events: Sequence[Mapping[str, Any]],
        *,
        expected_version: Expected = "any",
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Append ``events`` (``{"type", "data", ...}``) to ``stream``, all or none: the
        answer's ``versions`` and ``positions``. ``VersionConflict`` on a version clash."""
        answer: dict[str, Any] = self._send(
            self._append(stream, events, expected_version, idempotency_key)
        )
        return answer

    def submit(
        self,
        pipeline: str,
        input: Mapping[str, Any],
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a run of a stageline pipeline: ``run_id`` and ``position``, or with
        ``wait`` the run itself if it ended within ``wait`` seconds."""
        answer: dict[str, Any] = self._send(
            self._submit(pipeline, input, wait, idempotency_key, self.timeout)
        )
        return answer

    def run(self, run_id: str, *, min_position: int | None = None) -> dict[str, Any]:
        """The run as the run-status view holds it, once the view reached ``min_position``."""
        answer: dict[str, Any] = self._send(self._run(run_id, min_position))
        return answer

    def report(
        self,
        pipeline: str,
        stages: Sequence[str],
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> RunReport:
        """Record a run of your own ``pipeline`` as ``with client.report(...) as run:``."""
        return RunReport(self, pipeline, stages, input, run_id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStageline(_Client):
    """``Stageline`` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        url: str,
        workspace: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, workspace, retries=retries, backoff=backoff)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    async def _send(self, call: dict[str, Any]) -> Any:
        request = self._http.build_request(**call)
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome
            try:
                outcome = await self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._delay(attempt, outcome)
            if delay is None:
                return _answer(outcome)
            await asyncio.sleep(delay)

    async def append(
        self,
        stream: str,
        events: Sequence[Mapping[str, Any]],
        *,
        expected_version: Expected = "any",
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """See ``Stageline.append``."""
        answer: dict[str, Any] = await self._send(
            self._append(stream, events, expected_version, idempotency_key)
        )
        return answer

    async def submit(
        self,
        pipeline: str,
        input: Mapping[str, Any],
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """See ``Stageline.submit``."""
        answer: dict[str, Any] = await self._send(
            self._submit(pipeline, input, wait, idempotency_key, self.timeout)
        )
        return answer

    async def run(self, run_id: str, *, min_position: int | None = None) -> dict[str, Any]:
        """See ``Stageline.run``."""
        answer: dict[str, Any] = await self._send(self._run(run_id, min_position))
        return answer

    def report(
        self,
        pipeline: str,
        stages: Sequence[str],
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> AsyncRunReport:
        """Record a run of your own ``pipeline`` as ``async with client.report(...) as run:``."""
        return AsyncRunReport(self, pipeline, stages, input, run_id)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _error(exc: BaseException) -> dict[str, str]:
    return {"error_type": type(exc).__name__, "error": (str(exc) or repr(exc))[:MAX_ERROR_CHARS]}


class Stage:
    """One attempt of a reported stage. Put what it produced in ``output`` (kept in the
    log) and ``metadata`` (shown in the run's view too); both are recorded as it ends."""

    def __init__(self, run: _Report, name: str) -> None:
        self.name = name
        self.index = run.stages.index(name)
        self.attempt = run.attempts.get(name, 0) + 1
        self.output: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}
        self._run = run
        self._began = 0.0

    def _started(self) -> list[dict[str, Any]]:
        # built under the report's lock: the same stage entered twice at once is two attempts
        self.attempt = self._run.attempts.get(self.name, 0) + 1
        self._began = time.perf_counter()
        data = {"stage": self.name, "index": self.index, "attempt": self.attempt}
        return [{"type": "StageStarted", "data": data, "occurred_at": _now()}]

    def _start_recorded(self) -> None:
        self._run.attempts[self.name] = self.attempt
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
            return [{"type": "StageCompleted", "data": data, "occurred_at": _now()}]
        data.update(_error(exc), permanent=True)
        return [{"type": "StageFailed", "data": data, "occurred_at": _now()}]

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


class _Report:
    """A reported run's state: its stream's version and the events each step appends.

    Its appends are made one at a time (stages may run concurrently: threads, or
    ``asyncio.gather``), each expecting the version the one before left.
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
        self.run_id = run_id or uuid.uuid4().hex
        self.stream = f"run-{self.run_id}"
        self.output: dict[str, Any] = {}
        """The run's output, recorded in ``RunCompleted``."""
        self.version: int | None = None
        """The stream's version after this report's last append (None: nothing yet)."""
        self.position: int | None = None
        """The log position of its last event: a read's ``min_position`` to see it."""
        self.attempts: dict[str, int] = {}
        self.at_stage: str | None = None
        """The stage whose start was recorded last."""
        self.failures: list[tuple[BaseException, str]] = []
        """What each failed stage raised: the run's failure names the stage it came from."""
        self._writer = uuid.uuid4().hex  # another reporter of this run never shares its keys

    def stage(self, name: str) -> Stage:
        """A stage of the run, one of ``stages``: started as the block begins, completed
        (or failed, if the block raises) as it ends. Again for the same name: its next attempt."""
        if name not in self.stages:
            raise ValueError(f"{name!r} is not one of the run's stages {self.stages}")
        return Stage(self, name)

    def _request(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        expected: Expected = "no_stream" if self.version is None else self.version
        key = f"{self._writer}:{expected}"
        return {"events": events, "expected_version": expected, "idempotency_key": key}

    def _appended(self, answer: Mapping[str, Any]) -> None:
        self.version, self.position = max(answer["versions"]), max(answer["positions"])

    def _started(self) -> list[dict[str, Any]]:
        data = {
            "pipeline": self.pipeline,
            "pipeline_version": REPORTED_VERSION,
            "stages": self.stages,
            "input": self.input,
        }
        return [{"type": "RunSubmitted", "data": data, "occurred_at": _now()}]

    def _ended(self, exc: BaseException | None) -> list[dict[str, Any]]:
        if exc is None:
            return [
                {"type": "RunCompleted", "data": {"output": self.output}, "occurred_at": _now()}
            ]
        data = {"stage": self._stage_of(exc), **_error(exc)}
        return [{"type": "RunFailed", "data": data, "occurred_at": _now()}]

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

    @staticmethod
    def _unrecorded(exc: BaseException | None, failure: ApiError) -> None:
        """A write that failed: raised, unless the caller's own exception is on its way."""
        if exc is None:
            raise failure
        exc.add_note(f"stageline could not record this failure: {failure}")


class RunReport(_Report):
    """A run of an outside pipeline, recorded as it goes: ``RunSubmitted`` on entering,
    ``RunCompleted`` on leaving, ``RunFailed`` if the block raises (re-raised)."""

    def __init__(self, client: Stageline, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._lock = threading.Lock()

    def _write(
        self,
        events: Events,
        exc: BaseException | None = None,
        recorded: Callable[[], None] | None = None,
    ) -> None:
        with self._lock:
            try:
                self._appended(self._client.append(self.stream, **self._request(events())))
            except ApiError as failure:
                self._unrecorded(exc, failure)
                return
            if recorded is not None:
                recorded()

    def __enter__(self) -> Self:
        self._write(self._started)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        refused = self._refused() if exc is None else None
        self._write(lambda: self._ended(exc or refused), exc or refused)
        if refused is not None:
            raise refused


class AsyncRunReport(_Report):
    """``RunReport`` for asyncio: ``async with``, and ``async with run.stage(...)``."""

    def __init__(self, client: AsyncStageline, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._lock = asyncio.Lock()

    async def _write(
        self,
        events: Events,
        exc: BaseException | None = None,
        recorded: Callable[[], None] | None = None,
    ) -> None:
        async with self._lock:
            try:
                self._appended(await self._client.append(self.stream, **self._request(events())))
            except ApiError as failure:
                self._unrecorded(exc, failure)
                return
            if recorded is not None:
                recorded()

    async def __aenter__(self) -> Self:
        await self._write(self._started)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        refused = self._refused() if exc is None else None
        await self._write(lambda: self._ended(exc or refused), exc or refused)
        if refused is not None:
            raise refused
