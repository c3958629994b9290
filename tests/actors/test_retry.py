"""Retry maths: when a failed attempt comes back, and when a stage gives up."""

from __future__ import annotations

import pytest

from stageline.actors.pipeline import RetryPolicy
from stageline.actors.retry import MAX_DELAY_SECONDS, next_delay


def test_no_retries_by_default() -> None:
    assert next_delay(1, False, RetryPolicy()) is None


def test_exponential_backoff_until_retries_are_spent() -> None:
    policy = RetryPolicy(max_retries=3, backoff_seconds=0.5, backoff_multiplier=2)
    assert [next_delay(a, False, policy) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, None]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(
        max_retries=10, backoff_seconds=1, backoff_multiplier=3, max_backoff_seconds=5
    )
    assert [next_delay(a, False, policy) for a in (1, 2, 3, 4)] == [1, 3, 5, 5]


def test_constant_backoff_with_multiplier_one() -> None:
    policy = RetryPolicy(max_retries=2, backoff_seconds=0.25, backoff_multiplier=1)
    assert next_delay(2, False, policy) == pytest.approx(0.25)


def test_permanent_errors_are_never_retried() -> None:
    assert next_delay(1, True, RetryPolicy(max_retries=5)) is None


def test_zero_backoff_retries_immediately() -> None:
    assert next_delay(1, False, RetryPolicy(max_retries=1, backoff_seconds=0)) == 0


def test_a_delay_past_a_day_or_past_the_float_range_is_a_day() -> None:
    huge = RetryPolicy(max_retries=3, backoff_seconds=1e308, backoff_multiplier=1e308)
    assert [next_delay(a, False, huge) for a in (1, 2, 3)] == [MAX_DELAY_SECONDS] * 3
    policy = RetryPolicy(max_retries=100, backoff_seconds=1, backoff_multiplier=10)
    assert next_delay(100, False, policy) == MAX_DELAY_SECONDS == 86_400
    capped = RetryPolicy(max_retries=100, backoff_seconds=1e308, max_backoff_seconds=1e300)
    assert next_delay(1, False, capped) == MAX_DELAY_SECONDS


def test_zero_backoff_stays_zero_whatever_the_multiplier() -> None:
    policy = RetryPolicy(max_retries=3, backoff_seconds=0, backoff_multiplier=1e308)
    assert next_delay(3, False, policy) == 0
