"""Tenants' limits as pure logic (deployments/tenants/buckets.py): the token bucket and the ledger."""

from __future__ import annotations

import pytest

from deployments.tenants.buckets import BURST_S, QuotaBook, TokenBucket


def test_a_bucket_refills_at_the_rate_holds_a_burst_and_lets_a_large_request_into_debt():
    bucket = TokenBucket.full(600, now=0.0)  # 10/s, a burst of 60
    assert bucket.capacity == 600 * BURST_S / 60
    assert bucket.can_take(60, 0.0)
    bucket.level -= 60
    assert not bucket.can_take(1, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(0.1, abs=1e-5)
    assert bucket.can_take(1, 0.1)
    assert bucket.reset_s(0.1) == pytest.approx(5.9, abs=1e-5)
    bucket.refill(100.0)
    assert bucket.level == bucket.capacity
    assert bucket.can_take(1000, 100.0), "larger than the bucket: admitted when it is full"
    bucket.level -= 1000
    assert not bucket.can_take(1, 100.0) and bucket.wait_s(1, 100.0) == pytest.approx(94.1, abs=1e-5)


def test_the_ledger_grants_all_or_nothing_and_a_lease_never_dips_below_zero():
    book = QuotaBook()
    limits = {"requests": 60, "concurrent": 2}  # a burst of 6 requests
    grant = book.take("t", limits, {"requests": 1, "concurrent": 1}, {"requests": 2}, now=0.0)
    assert grant.granted == {"requests": 3, "concurrent": 1}
    assert book.take("t", limits, {"requests": 1}, {"requests": 2}, now=0.0).granted == {"requests": 3}
    assert book.take("t", limits, {"requests": 1}, {"requests": 2}, now=0.0).refused == "requests", \
        "a lease is whole or not at all"
    assert book.take("t", limits, {"requests": 0}, {}, now=0.0).granted == {}
    refused = book.take("t", limits, {"requests": 1}, {"requests": 2}, now=0.0)
    assert refused.refused == "requests" and refused.wait_s == pytest.approx(3.0)
    book.take("t", limits, {"concurrent": 1}, {}, now=10.0)
    full = book.take("t", limits, {"requests": 1, "concurrent": 1}, {}, now=10.0)
    assert full.refused == "concurrent" and not full.granted, "nothing is taken when one kind is short"
    book.give("t", limits, {"concurrent": 1}, now=10.0)
    assert book.take("t", limits, {"concurrent": 1}, {}, now=10.0).granted == {"concurrent": 1}
