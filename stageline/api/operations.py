"""``/v1/runs/{run_id}/undo|retry|cancel``: change a run's course with new events, never edits.

Each route decides from the run's own stream (not the view), so it is right even
while the view lags; its answer carries the log `position` to pass as
`min_position` to a read that must see the result.
"""

from __future__ import annotations

from starlette.responses import Response

from stageline.api.deps import CorrelationId, StackDep, Workspace, check_run_id
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import CancelRun, RunOperation, error_responses

__all__ = ["router"]

router = Router(prefix="/v1/runs", tags=["runs"])


@router.post(
    "/{run_id}/undo",
    response_model=None,
    responses={200: {"model": RunOperation}, **error_responses(400, 404, 409, 503)},
)
async def undo_run(
    run_id: str, stack: StackDep, workspace: Workspace, correlation_id: CorrelationId
) -> Response:
    """Reverse every effect of the run, last stage first; the run ends `compensated`.

    The original events stay in the log, followed by compensating events that each
    name the event they reverse (e.g. entity mentions are retracted). A running run
    stops: its stage attempt under way is interrupted, as by a cancel, or, a
    plain-function stage, discarded when it ends. Undoing an undone run writes
    nothing and answers `changed: false`. 409 CONFLICT for a run reported from
    outside (`pipeline_version` 0): its effects are the reporter's to reverse.
    """
    check_run_id(run_id)
    result = await stack.operations.undo(workspace, run_id, correlation_id=correlation_id)
    return json_response(result)


@router.post(
    "/{run_id}/retry",
    status_code=202,
    response_model=None,
    responses={202: {"model": RunOperation}, **error_responses(400, 404, 409, 503)},
)
async def retry_run(
    run_id: str, stack: StackDep, workspace: Workspace, correlation_id: CorrelationId
) -> Response:
    """Drive a failed run again from the stage that failed, with the next attempt number.

    Answers 202 at once: the run is `processing` again and its dead letter is
    closed as redriven. 409 CONFLICT unless the run failed, or if it was reported
    from outside (`pipeline_version` 0): stageline does not drive such a run.
    """
    check_run_id(run_id)
    result = await stack.operations.retry(workspace, run_id, correlation_id=correlation_id)
    return json_response(result, 202)


@router.post(
    "/{run_id}/cancel",
    response_model=None,
    responses={200: {"model": RunOperation}, **error_responses(400, 404, 409, 413, 503)},
)
async def cancel_run(
    run_id: str,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    body: CancelRun | None = None,
) -> Response:
    """Stop a run; the run ends `cancelled`, and no later stage starts.

    A stage attempt under way is interrupted: the worker running it cancels it (an
    `async` stage gets `CancelledError` at its next `await`), and records nothing
    for it. A plain-function stage, or one whose worker missed the notice, runs to
    its end, and its result is discarded. The optional body's `reason` is recorded.
    Cancelling a cancelled run writes nothing (`changed: false`); 409 CONFLICT if the
    run ended otherwise. A run reported from outside (`pipeline_version` 0) is recorded
    cancelled with a `note`: stageline cannot stop its reporter's process, whose
    next append to the run is refused.
    """
    check_run_id(run_id)
    reason = body.reason if body is not None else ""
    result = await stack.operations.cancel(
        workspace, run_id, reason=reason, correlation_id=correlation_id
    )
    return json_response(result)
