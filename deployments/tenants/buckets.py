"""The arithmetic of a tenant's limits, with no I/O: token buckets for the per-minute
rates, a pool for concurrency, and :class:`QuotaBook`, the cluster's ledger of every
tenant's units, which the quota actor (:mod:`deployments.tenants.quota_service`) keeps.

A per-minute limit is a token bucket that refills at ``limit / 60`` per second and holds
at most :data:`BURST_S` seconds of it: like OpenAI, which enforces a minute's limit over
shorter windows, so a tenant cannot spend a whole minute's allowance in one burst, and
the admitted rate over any stretch of a minute or more stays within a tenth of the limit
(docs/tenants.md). A request larger than the bucket holds is admitted when the bucket is
full and leaves it in debt, so no request is refused forever for its size alone; the
debt is paid off by the refill before the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BURST_S = 6.0
"""Seconds of a per-minute limit a full bucket holds."""

def burst(per_minute: float) -> float:
    """What a full bucket of a ``per_minute`` limit holds: BURST_S seconds of it, at least 1."""
    return max(1.0, per_minute * BURST_S / 60.0)


KINDS = ("requests", "tokens", "concurrent")
"""What a tenant spends: requests and tokens per minute (buckets), requests at once (a pool)."""


@dataclass
class TokenBucket:
    """``per_minute`` units a minute, at most ``capacity`` at once; ``level`` may go below
    zero (debt: tokens used past what a request reserved)."""

    per_minute: float
    level: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> TokenBucket:
        bucket = cls(per_minute, 0.0, now)
        bucket.level = bucket.capacity
        return bucket

    @property
    def capacity(self) -> float:
        return burst(self.per_minute)

    @property
    def rate(self) -> float:
        """Units refilled per second."""
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def can_take(self, amount: float, now: float) -> bool:
        """Whether ``amount`` may be taken now: the bucket holds it, or is full (a request
        larger than the bucket)."""
        self.refill(now)
        return self.level >= min(amount, self.capacity) - 1e-9

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until :meth:`can_take` of ``amount`` holds, if nothing else is taken."""
        self.refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate + 1e-6)

    def reset_s(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self.refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)

    def retune(self, per_minute: float, now: float) -> None:
        """A new limit (the tenants file changed): keep the level, within the new capacity."""
        self.refill(now)
        self.per_minute = per_minute
        self.level = min(self.level, self.capacity)


PLACE_TTL_S = 10.0
"""A holder's places come back by themselves this long after it last said it holds them."""


@dataclass
class ConcurrencyPool:
    """``size`` places, handed out to holders (each ingress replica; None: a holder that
    never expires, as in a replica's own fallback ledger). A holder's count expires
    :data:`PLACE_TTL_S` after its last renewal, so places a holder lost track of (a take
    whose answer timed out, a give-back that failed, a replica that died) come back by
    themselves instead of refusing the tenant forever."""

    size: int
    holders: dict[str | None, tuple[int, float]] = field(default_factory=dict)
    """holder -> (places, expires at)."""

    def expire(self, now: float) -> None:
        for holder, (_, expires) in list(self.holders.items()):
            if holder is not None and expires < now:
                del self.holders[holder]

    @property
    def out(self) -> int:
        """Places handed out and not expired (as of the last :meth:`expire`)."""
        return sum(count for count, _ in self.holders.values())

    @property
    def level(self) -> float:
        return float(self.size - self.out)

    def add(self, holder: str | None, amount: int, now: float) -> None:
        """``amount`` places more (fewer, if negative) for ``holder``, its lease renewed."""
        count, _ = self.holders.get(holder, (0, 0.0))
        count = max(0, min(self.size, count + amount))
        self.holders[holder] = (count, now + PLACE_TTL_S)
        if count == 0 and holder is not None:
            del self.holders[holder]

    def renew(self, holder: str, count: int, now: float) -> None:
        """``holder`` holds ``count`` places now: its own count, replacing the book's."""
        if count <= 0:
            self.holders.pop(holder, None)
        else:
            self.holders[holder] = (min(self.size, count), now + PLACE_TTL_S)


@dataclass
class Standing:
    """One kind of a tenant's limit as a response's headers tell it: the limit, what is left
    and the seconds until it is whole again."""

    limit: int
    remaining: float
    reset_s: float


@dataclass
class Grant:
    """The book's answer to a request for units: ``granted`` by kind (empty when refused),
    ``wait_s`` until the refused units could be had, and the standing of each limit."""

    granted: dict[str, float] = field(default_factory=dict)
    refused: str | None = None
    """The kind that was short, when the request was refused."""
    wait_s: float = 0.0
    standing: dict[str, Standing] = field(default_factory=dict)


Limits = dict[str, int]
"""A tenant's limits by kind (only the ones it has): ``{"requests": rpm, "tokens": tpm,
"concurrent": n}``."""


class QuotaBook:
    """Every tenant's buckets and pools. Units are handed out in leases: a router replica
    takes what a request needs and a little more, spends it locally, and gives back what it
    did not spend, so most requests need no call to the book. ``start_full``: a new bucket
    holds its burst (False: it starts empty and fills at its rate)."""

    def __init__(self, start_full: bool = True) -> None:
        self._start_full = start_full
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._pools: dict[str, ConcurrencyPool] = {}

    def _unit(self, tenant: str, kind: str, limit: int, now: float) -> TokenBucket | ConcurrencyPool:
        if kind == "concurrent":
            pool = self._pools.get(tenant)
            if pool is None:
                pool = self._pools[tenant] = ConcurrencyPool(limit)
            pool.size = limit
            pool.expire(now)
            return pool
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            bucket = self._buckets[tenant, kind] = TokenBucket.full(limit, now)
            if not self._start_full:
                bucket.level = 0.0
        elif bucket.per_minute != limit:
            bucket.retune(limit, now)
        return bucket

    def take(self, tenant: str, limits: Limits, need: dict[str, float], extra: dict[str, float],
             now: float, holder: str | None = None) -> Grant:
        """Hand out ``need`` and ``extra`` of each kind, all or nothing (a lease; a bucket
        smaller than the lease hands it out whole when full, into debt); places go to
        ``holder``."""
        units = {kind: self._unit(tenant, kind, limit, now) for kind, limit in limits.items()}
        grant = Grant()
        for kind, amount in need.items():
            unit = units.get(kind)
            if unit is None or amount <= 0:
                continue
            if isinstance(unit, TokenBucket):
                # A whole lease or nothing: a tenant at its limit then asks the ledger once per
                # lease, not once per request (units not handed out stay in the bucket).
                lease = amount + extra.get(kind, 0.0)
                if not unit.can_take(lease, now):
                    grant.refused, grant.wait_s = kind, unit.wait_s(lease, now)
                    break
            elif unit.level < amount:
                grant.refused, grant.wait_s = kind, 1.0  # a place frees when a request ends
                break
        if grant.refused is None:
            for kind, unit in units.items():
                amount = need.get(kind, 0.0)
                spare = max(0.0, unit.level - amount)
                # Requests and places are whole: a lease of 5.99 requests would strand the 0.99.
                amount += min(extra.get(kind, 0.0), spare if kind == "tokens" else float(int(spare + 1e-9)))
                if amount > 0:
                    self._spend(unit, amount, holder, now)
                    grant.granted[kind] = amount
        grant.standing = self.standing(tenant, limits, now)
        return grant

    def give(self, tenant: str, limits: Limits, amounts: dict[str, float], now: float,
             holder: str | None = None) -> None:
        """Take back units a router did not spend (positive), or charge it what it spent past
        its lease (negative: tokens used beyond a reservation); places from ``holder``."""
        for kind, amount in amounts.items():
            if kind not in limits or amount == 0:
                continue
            unit = self._unit(tenant, kind, limits[kind], now)
            self._spend(unit, -amount, holder, now)

    def renew(self, holder: str, places: dict[str, tuple[int, int]], now: float) -> None:
        """``holder`` holds ``places[tenant] = (limit, count)`` of each tenant it names, and
        none of any other: its own count replaces the book's and starts its lease again (a
        new book, after the actor was lost, learns what the replicas hold this way)."""
        for tenant, (limit, _) in places.items():
            self._unit(tenant, "concurrent", limit, now)
        for tenant, pool in self._pools.items():
            if tenant in places or holder in pool.holders:
                pool.renew(holder, places[tenant][1] if tenant in places else 0, now)

    @staticmethod
    def _spend(unit: TokenBucket | ConcurrencyPool, amount: float, holder: str | None, now: float) -> None:
        if isinstance(unit, TokenBucket):
            unit.level = min(unit.capacity, unit.level - amount)
        else:
            unit.add(holder, int(round(amount)), now)

    def standing(self, tenant: str, limits: Limits, now: float) -> dict[str, Standing]:
        """Each of the tenant's per-minute limits as the book holds it now."""
        result = {}
        for kind, limit in limits.items():
            unit = self._unit(tenant, kind, limit, now)
            if isinstance(unit, TokenBucket):
                result[kind] = Standing(limit, max(0.0, unit.level), unit.reset_s(now))
        return result
