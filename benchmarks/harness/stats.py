"""The one percentile every benchmark reports (TTFT, ITL and end-to-end p50/p90/p99,
the simulator's and the placement table's latencies)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` from 0 to 100) of ``values``, in any order; None when
    there are none.

    Linear interpolation between the two closest ranks: the value at rank
    ``q / 100 * (n - 1)`` of the sorted values, counted from 0, a fractional rank lying
    that far between its neighbours. It is numpy's default (``numpy.percentile``,
    ``method="linear"``), R's type 7 and ``statistics.quantiles(method="inclusive")``, so a
    reader can recompute any number from the raw values with the usual tools; its p50 is the
    median (:func:`statistics.median`, which the benchmarks' other medians use); and it
    moves smoothly as values move, where a rank rule jumps from one value to the next."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    rank = q / 100 * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)
