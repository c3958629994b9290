"""The stage-duration histograms' pure reading: merging pipelines and taking percentiles."""

from __future__ import annotations

import math
import random

import pytest

from stageline.projections.durations import MAX_BUCKET, RATIO, Histogram, merge, percentile


def histogram(durations: list[float]) -> Histogram:
    """What the view's writer keeps for these durations (its bucket rule, in Python)."""
    h = Histogram([], [])
    for d in durations:
        b = min(math.floor(math.log(max(d, 0) + 1.0) / math.log(RATIO)), MAX_BUCKET)
        while len(h.counts) <= b:
            h.counts.append(0)
            h.sums.append(0)
        h.counts[b] += 1
        h.sums[b] += round(d * 1000)  # µs
    return h


def exact(durations: list[float], q: float) -> float:
    """``percentileCont``: linear between the two values around rank q * (n - 1)."""
    ordered = sorted(durations)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def test_no_durations_read_as_zero() -> None:
    assert percentile(Histogram([], []), 0.5) == 0.0
    assert percentile(Histogram([0, 0], [0, 0]), 0.95) == 0.0


def test_one_value_repeated_reads_back_exactly() -> None:
    assert percentile(histogram([500.0] * 7), 0.5) == 500.0
    assert percentile(histogram([0.0, 0.0]), 0.95) == 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_a_bucket_of_percentile_cont(seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.lognormvariate(5, 2) for _ in range(rng.randrange(1, 3000))]
    h = histogram(durations)
    for q in (0.0, 0.5, 0.95, 1.0):
        want = exact(durations, q)
        assert percentile(h, q) == pytest.approx(want, abs=(RATIO - 1) * (want + 1))


def test_pipelines_sharing_a_stage_name_add_up() -> None:
    a, b = [1.0, 2.0, 300.0], [40.0, 5000.0]
    merged = merge([histogram(a), histogram(b)])
    assert merged == histogram(a + b)
    assert percentile(merged, 0.5) == 40.0


def test_histograms_stored_as_doubles_merge_as_integers() -> None:
    # FalkorDB's sum() is a double: what the writer stored before it cast them back
    stored = histogram([1.0, 2.0, 2.0])
    merged = merge([([float(n) for n in stored.counts], [float(us) for us in stored.sums])])
    assert merged == stored
    assert all(type(n) is int for n in merged.counts + merged.sums)


def test_a_mean_cannot_leave_its_bucket() -> None:
    h = histogram([100.0, 100.0])
    b = next(i for i, n in enumerate(h.counts) if n)
    h.sums[b] = 10**12  # a sum gone wrong reads as the bucket's top, no further
    assert percentile(h, 0.5) <= RATIO ** (b + 1) - 1.0
