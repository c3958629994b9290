"""Appends from outside: ``POST /v1/streams/{stream}/events`` and the ingest channel.

An append to a run stream (``run-<id>``) is checked against the run's history
(``stageline.actors.reported``: read the stream, fold, check) and appended at the
version it was checked against, so nothing lands between the check and the append;
a clash on a version chosen here means the run moved on: read it again and check
again. An append that names its own ``expected_version`` keeps it: a clash is the
caller's, as for any stream. Appends to other streams go to the store as they are.
Stageline's own appends (the runtime's, the run operations') never come through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import msgspec

from stageline.actors.reported import ReportedRun
from stageline.errors import ConcurrencyError, Conflict, Unavailable
from stageline.events.envelope import ANY
from stageline.events.keys import RUN_STREAM_PREFIX
from stageline.events.store import AppendRequest, AppendResult, EventStore

__all__ = ["append_batch"]

_ATTEMPTS = 5


async def append_batch(
    store: EventStore, requests: Sequence[AppendRequest]
) -> list[AppendResult | Exception]:
    """``store.append_batch`` for appends from outside: a failed one is returned, not raised.

    Appends to one run in the same batch are checked in order, each against what the
    ones before it leave.
    """
    out: list[AppendResult | Exception | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    for _ in range(_ATTEMPTS):
        runs = await _read_runs(store, [requests[i] for i in pending])
        sent: list[tuple[int, AppendRequest]] = []
        for i in pending:
            request = requests[i]
            run = runs.get((request.workspace, request.stream))
            try:
                sent.append((i, request if run is None else _checked(run, request)))
            except Conflict as exc:
                out[i] = exc
        results = await store.append_batch([request for _, request in sent])
        pending = []
        for (i, request), result in zip(sent, results, strict=True):
            if isinstance(result, ConcurrencyError) and request is not requests[i]:
                pending.append(i)  # the run moved on since it was read: check it again
            else:
                out[i] = result
        if not pending:
            break
    for i in pending:  # not the request's fault: ingest leaves it pending, HTTP answers 503
        out[i] = Unavailable(
            "the run kept changing under the check; try again", stream=requests[i].stream
        )
    return cast(list[AppendResult | Exception], out)  # every one is set by now


async def _read_runs(
    store: EventStore, requests: Sequence[AppendRequest]
) -> dict[tuple[str, str], ReportedRun]:
    streams = sorted(
        {(r.workspace, r.stream) for r in requests if r.stream.startswith(RUN_STREAM_PREFIX)}
    )
    histories = await asyncio.gather(*(store.read_stream(ws, s) for ws, s in streams))
    return {
        (ws, s): ReportedRun.of(s, history)
        for (ws, s), history in zip(streams, histories, strict=True)
    }


def _checked(run: ReportedRun, request: AppendRequest) -> AppendRequest:
    """``request`` to send, at the version of ``run`` its events were checked against;
    ``Conflict`` if it breaks a rule, ``ConcurrencyError`` if it expects another version."""
    if all(e.event_id in run.ids for e in request.events):
        return request  # a retry: the store answers it as it answered the first time
    version = run.version
    if request.expected_version not in (ANY, version):
        raise ConcurrencyError(request.stream, request.expected_version, version)
    run.take(request.events)
    if request.expected_version != ANY:
        return request
    return msgspec.structs.replace(request, expected_version=version)
