"""When a failed attempt comes back: pure retry maths, no clock and no I/O."""

from __future__ import annotations

from stageline.actors.pipeline import RetryPolicy

MAX_DELAY_SECONDS = 86_400.0
"""The longest a retry waits, whatever its policy says: a day. A policy's numbers are only
checked to be finite, so their product may not be (``1e308 * 1e308``)."""


def next_delay(attempt: int, permanent: bool, policy: RetryPolicy) -> float | None:
    """Seconds until attempt ``attempt + 1``, or None when the stage must give up.

    ``attempt`` is the 1-based number of the attempt that just failed. A
    permanent error is never retried; otherwise ``max_retries`` more attempts
    follow the first, each ``backoff_seconds * backoff_multiplier ** (n - 1)``
    after the failure, capped at ``max_backoff_seconds`` and at ``MAX_DELAY_SECONDS``.
    """
    if permanent or attempt > policy.max_retries:
        return None
    cap = MAX_DELAY_SECONDS
    if policy.max_backoff_seconds is not None:
        cap = min(policy.max_backoff_seconds, cap)
    if policy.backoff_seconds <= 0:
        return 0.0  # whatever the multiplier: not 0 * inf
    try:
        delay = policy.backoff_seconds * policy.backoff_multiplier ** (attempt - 1)
    except OverflowError:  # a float power past the float range raises, a product is inf
        return cap
    return delay if delay < cap else cap
