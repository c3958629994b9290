"""A client of the stageline HTTP API.

``Stageline`` (blocking) and ``AsyncStageline`` append events, submit runs, undo,
cancel and retry them, and read runs, their stats and streams. Their ``report``
records a run of the caller's own pipeline: the run reporter lives in
``stageline/reporting.py`` (its names can be imported from here too).

Every append and submission carries an ``Idempotency-Key`` (one per call unless
given), so connection errors and 503 answers are retried, with backoff, without
ever writing an event twice; so are reads, and undo and cancel, which write
nothing the second time. ``retry`` is sent once. Any other error answer is raised
as ``ApiError``.

Bodies are encoded as JSON here (``to_json``): datetimes, dates, UUIDs, Decimals
and paths as text, as the server writes them. A value JSON cannot hold (``NaN``,
an infinity, an object of another type) raises ``TypeError`` or ``ValueError``
before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote

import httpx

from stageline.errors import StagelineError

if TYPE_CHECKING:
    from stageline.reporting import (
        ABANDONED_ERROR,
        MAX_ERROR_CHARS,
        MAX_HELD,
        REPORTED_VERSION,
        AsyncRunReport,
        CannotResume,
        RunReport,
        Stage,
    )

__all__ = [
    "ABANDONED_ERROR",
    "MAX_ERROR_CHARS",
    "MAX_HELD",
    "REPORTED_VERSION",
    "ApiError",
    "AsyncRunReport",
    "AsyncStageline",
    "CannotResume",
    "RunReport",
    "Stage",
    "Stageline",
    "Unreachable",
    "VersionConflict",
    "next_delay",
    "path_segment",
    "to_json",
]

log = logging.getLogger("stageline.client")

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
        status = f"{self.status} " if self.status else ""  # none: no answer came
        return f"{status}{self.code}: {super().__str__()}"


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
    to 5 s). Safe for the calls that use it: reads change nothing, appends and
    submissions carry an Idempotency-Key, so one that reached the server is not applied
    again, and an undo or a cancel repeated writes nothing.
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

    def _delay(self, attempt: int, outcome: Outcome, retries: int | None) -> float | None:
        retries = self.retries if retries is None else retries
        return next_delay(attempt, outcome, retries=retries, backoff=self.backoff)

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
    def _get(url: str, **params: Any) -> dict[str, Any]:
        """A GET of ``url`` with the ``params`` that are not None."""
        return {
            "method": "GET",
            "url": url,
            "params": {k: v for k, v in params.items() if v is not None},
        }

    @staticmethod
    def _run(run_id: str, min_position: int | None) -> dict[str, Any]:
        return _Client._get(f"/v1/runs/{path_segment(run_id)}", min_position=min_position)

    @staticmethod
    def _runs(
        status: str | None,
        pipeline: str | None,
        limit: int,
        cursor: str | None,
        min_position: int | None,
    ) -> dict[str, Any]:
        return _Client._get(
            "/v1/runs",
            status=status,
            pipeline=pipeline,
            limit=limit,
            cursor=cursor,
            min_position=min_position,
        )

    @staticmethod
    def _stats(pipeline: str | None, min_position: int | None) -> dict[str, Any]:
        return _Client._get("/v1/runs/stats", pipeline=pipeline, min_position=min_position)

    @staticmethod
    def _stream_page(
        stream: str, from_version: int | None, limit: int, backwards: bool
    ) -> dict[str, Any]:
        return _Client._get(
            f"/v1/streams/{path_segment(stream)}/events",
            from_version=from_version,
            limit=limit,
            backwards=backwards or None,
        )

    @staticmethod
    def _operation(run_id: str, verb: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"method": "POST", "url": f"/v1/runs/{path_segment(run_id)}/{verb}"}
        if body is not None:
            call |= {"content": to_json(body), "headers": _JSON}
        return call


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

    def _send(self, call: dict[str, Any], retries: int | None = None) -> Any:
        request = self._http.build_request(**call)
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome
            try:
                outcome = self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._delay(attempt, outcome, retries)
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

    def runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        min_position: int | None = None,
    ) -> dict[str, Any]:
        """One page of runs, newest first, with ``status`` and of ``pipeline`` if given:
        ``{"runs": [...], "next_cursor": ...}``. Pass ``next_cursor`` back as ``cursor``
        for the next page; it is None after the last."""
        answer: dict[str, Any] = self._send(
            self._runs(status, pipeline, limit, cursor, min_position)
        )
        return answer

    def iter_runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        page_size: int = 100,
        min_position: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every run ``runs`` lists, newest first, page after page (one request a page)."""
        cursor = None
        while True:
            page = self.runs(
                status=status,
                pipeline=pipeline,
                limit=page_size,
                cursor=cursor,
                min_position=min_position,
            )
            yield from page["runs"]
            if (cursor := page["next_cursor"]) is None:
                return

    def stats(
        self, *, pipeline: str | None = None, min_position: int | None = None
    ) -> dict[str, Any]:
        """Run counts by status, their total, and per stage the p50/p95 of completed
        durations (of ``pipeline`` only, if given)."""
        answer: dict[str, Any] = self._send(self._stats(pipeline, min_position))
        return answer

    def events(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        limit: int = 100,
        backwards: bool = False,
    ) -> dict[str, Any]:
        """A page of ``stream``'s events in version order (``backwards``: newest first),
        from ``from_version``: the answer's ``events``, its ``version``, and
        ``next_from_version`` to go on from (None after the last page)."""
        call = self._stream_page(stream, from_version, limit, backwards)
        answer: dict[str, Any] = self._send(call)
        return answer

    def undo(self, run_id: str) -> dict[str, Any]:
        """Reverse every effect of the run, last stage first (the run ends ``compensated``);
        ``changed`` is false for a run undone already."""
        answer: dict[str, Any] = self._send(self._operation(run_id, "undo"))
        return answer

    def retry(self, run_id: str) -> dict[str, Any]:
        """Drive a failed run again from the stage that failed. Sent once, not resent
        after a lost answer or a 503: a resend would find the run running and answer 409."""
        answer: dict[str, Any] = self._send(self._operation(run_id, "retry"), retries=0)
        return answer

    def cancel(self, run_id: str, *, reason: str = "") -> dict[str, Any]:
        """Stop the run (it ends ``cancelled``), recording ``reason``; ``changed`` is
        false for a run cancelled already."""
        answer: dict[str, Any] = self._send(self._operation(run_id, "cancel", {"reason": reason}))
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
        from stageline import reporting

        return reporting.RunReport(self, pipeline, stages, input, run_id)

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

    async def _send(self, call: dict[str, Any], retries: int | None = None) -> Any:
        request = self._http.build_request(**call)
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome
            try:
                outcome = await self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._delay(attempt, outcome, retries)
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

    async def runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        min_position: int | None = None,
    ) -> dict[str, Any]:
        """See ``Stageline.runs``."""
        answer: dict[str, Any] = await self._send(
            self._runs(status, pipeline, limit, cursor, min_position)
        )
        return answer

    async def iter_runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        page_size: int = 100,
        min_position: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """See ``Stageline.iter_runs``: ``async for run in client.iter_runs()``."""
        cursor = None
        while True:
            page = await self.runs(
                status=status,
                pipeline=pipeline,
                limit=page_size,
                cursor=cursor,
                min_position=min_position,
            )
            for run in page["runs"]:
                yield run
            if (cursor := page["next_cursor"]) is None:
                return

    async def stats(
        self, *, pipeline: str | None = None, min_position: int | None = None
    ) -> dict[str, Any]:
        """See ``Stageline.stats``."""
        answer: dict[str, Any] = await self._send(self._stats(pipeline, min_position))
        return answer

    async def events(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        limit: int = 100,
        backwards: bool = False,
    ) -> dict[str, Any]:
        """See ``Stageline.events``."""
        call = self._stream_page(stream, from_version, limit, backwards)
        answer: dict[str, Any] = await self._send(call)
        return answer

    async def undo(self, run_id: str) -> dict[str, Any]:
        """See ``Stageline.undo``."""
        answer: dict[str, Any] = await self._send(self._operation(run_id, "undo"))
        return answer

    async def retry(self, run_id: str) -> dict[str, Any]:
        """See ``Stageline.retry``."""
        answer: dict[str, Any] = await self._send(self._operation(run_id, "retry"), retries=0)
        return answer

    async def cancel(self, run_id: str, *, reason: str = "") -> dict[str, Any]:
        """See ``Stageline.cancel``."""
        call = self._operation(run_id, "cancel", {"reason": reason})
        answer: dict[str, Any] = await self._send(call)
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
        from stageline import reporting

        return reporting.AsyncRunReport(self, pipeline, stages, input, run_id)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def __getattr__(name: str) -> Any:
    """The reporter's names (``from stageline.client import RunReport``), taken from
    ``stageline.reporting`` when first asked for: that module imports this one, so this
    one does not import it as it loads."""
    from stageline import reporting

    if name in reporting.__all__:
        return getattr(reporting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
