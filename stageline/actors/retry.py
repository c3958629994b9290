"""When a failed attempt comes back: pure retry maths, no clock and no I/O."""

from __future__ import annotations

from stageline.actors.pipeline import RetryPolicy


def next_delay(attempt: int, permanent: bool, policy: RetryPolicy) -> float | None:
    """Seconds until attempt ``attempt + 1``, or None when the stage must give up.

    ``attempt`` is the 1-based number of the attempt that just failed. A
    permanent error is never retried; otherwise ``max_retries`` more attempts
    follow the first, each ``backoff_seconds * backoff_multiplier ** (n - 1)``
    after the failure, capped at ``max_backoff_seconds``.
    """
    if permanent or attempt > policy.max_retries:
        return None
    delay = policy.backoff_seconds * policy.backoff_multiplier ** (attempt - 1)
    if policy.max_backoff_seconds is not None:
        delay = min(delay, policy.max_backoff_seconds)
    return delay
