"""Stage durations as log-scale histograms: what ``GET /v1/runs/stats`` reads.

The run-status view keeps, per pipeline and stage name, how many completed
stages took each duration, by bucket: bucket ``b`` holds the durations ``d``
(ms) with ``RATIO**b <= d + 1 < RATIO**(b + 1)`` (the last, ``MAX_BUCKET``,
every longer one). The view's writer moves a stage into its bucket when the
stage is stored completed and out of it when a later event changes it (an
undo, a new attempt), so reading the percentiles costs one row per pipeline
and stage, however many runs the view holds; a scan of every run's stages
took 1.2 s at 100,000 runs.

Each bucket also sums its durations, in whole microseconds (integers: the
same whatever order the batches add and take them in, so a rebuilt view
equals the live one). A percentile is read as ``percentileCont`` takes it,
each duration counted as the mean of its bucket's: within 2% of ``d + 1`` (a
bucket's width), so within 2% of any duration from 100 ms up and 0.04 ms of
shorter ones; to the microsecond when the durations around the rank are all
one value. The writer computes a duration's bucket and microseconds in Cypher
(``bucket_cypher``, ``micros_cypher``) from the stored value, so that a
duration taken out of a bucket is taken as it was put in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "MAX_BUCKET",
    "RATIO",
    "Histogram",
    "bucket_cypher",
    "merge",
    "micros_cypher",
    "percentile",
]

RATIO = 1.02
_LOG_RATIO = math.log(RATIO)


MAX_BUCKET = 1500
"""The last bucket: from 1.02**1500 ms (250 years) on, a clock's reading taken for a
duration, say; it keeps the arrays a write rebuilds bounded."""


def bucket_cypher(duration: str) -> str:
    """The Cypher expression of the bucket of ``duration`` (ms, a number; negative is 0)."""
    bucket = (
        f"toInteger(floor(log(CASE WHEN {duration} > 0 THEN {duration} ELSE 0 END + 1.0)"
        f" / {_LOG_RATIO!r}))"
    )
    return f"CASE WHEN {bucket} > {MAX_BUCKET} THEN {MAX_BUCKET} ELSE {bucket} END"


def micros_cypher(duration: str) -> str:
    """The Cypher expression of ``duration`` (ms) in whole microseconds, up to 10**12 ms
    (what the sums of the last bucket may hold without passing a 64-bit integer)."""
    return (
        f"toInteger(round(CASE WHEN {duration} > 1.0e12 THEN 1.0e12 ELSE {duration} END * 1000.0))"
    )


class Histogram(NamedTuple):
    """Per bucket: how many durations it holds, and their sum (µs)."""

    counts: list[int]
    sums: list[int]


def merge(histograms: Iterable[tuple[Sequence[int], Sequence[int]]]) -> Histogram:
    """Several histograms added up (pipelines sharing a stage name)."""
    total = Histogram([], [])
    for counts, sums in histograms:
        if len(counts) > len(total.counts):
            grow = len(counts) - len(total.counts)
            total.counts.extend([0] * grow)
            total.sums.extend([0] * grow)
        for i, (n, us) in enumerate(zip(counts, sums, strict=True)):
            # as integers: histograms written before 2026-11-24 hold doubles (FalkorDB's sum())
            total.counts[i] += int(n)
            total.sums[i] += int(us)
    return total


def percentile(histogram: Histogram, q: float) -> float:
    """The ``q`` quantile (0-1) of the durations counted, in ms, as ``percentileCont``
    takes it (between the two durations around rank ``q * (n - 1)``), each duration the
    mean of its bucket's; 0.0 for no durations."""
    n = sum(histogram.counts)
    if n <= 0:
        return 0.0
    rank = q * (n - 1)
    low = math.floor(rank)
    below, above = _at(histogram, low), _at(histogram, min(low + 1, n - 1))
    return below + (rank - low) * (above - below)


def _at(histogram: Histogram, rank: int) -> float:
    """The mean of the bucket holding the duration of 0-based ``rank`` (< the total)."""
    seen = 0
    for b, k in enumerate(histogram.counts):
        seen += k
        if seen > rank:
            # the mean stays in the bucket (rounding to the µs might take it past an edge)
            low = math.exp(b * _LOG_RATIO) - 1.0
            high = math.inf if b >= MAX_BUCKET else math.exp((b + 1) * _LOG_RATIO) - 1.0
            return min(max(histogram.sums[b] / k / 1000, low, 0.0), high)
    raise ValueError(f"rank {rank} is past the {seen} durations counted")
