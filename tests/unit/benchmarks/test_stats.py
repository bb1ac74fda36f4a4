"""benchmarks/harness/stats.py: the one percentile every benchmark reports."""

from __future__ import annotations

import random
import statistics

import pytest

from benchmarks.harness.stats import percentile


def test_a_percentile_interpolates_between_the_two_closest_ranks():
    values = [4.0, 1.0, 3.0, 2.0]  # any order
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5, "halfway between the middle two"
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7: 0.7 of the way from 3 to 4
    assert percentile([7.0], 99) == 7.0
    assert values == [4.0, 1.0, 3.0, 2.0], "the caller's list is not sorted in place"


def test_no_values_have_no_percentile_and_q_is_checked():
    assert percentile([], 50) is None
    assert percentile(iter(()), 99) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


def test_p50_is_the_median_and_every_percentile_is_numpys_default():
    numpy = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.expovariate(1.0) for _ in range(n)]
        assert percentile(values, 50) == pytest.approx(statistics.median(values))
        for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)))
