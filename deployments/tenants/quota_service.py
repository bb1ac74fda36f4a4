"""Tenants' limits across every router replica: one quota actor per application, and
each router replica's leases from it.

Why an actor with leases. A tenant's requests arrive at any router replica, so a limit
kept per replica either admits N times the limit or, split N ways, refuses a tenant whose
requests all land on one replica. The :class:`QuotaActor` holds the one ledger
(:class:`~deployments.tenants.buckets.QuotaBook`). A router replica does not ask it per
request: it takes a lease (what the request needs and a tenth of a bucket more), spends
it locally, and gives back what it has not spent after :data:`LEASE_IDLE_S` idle. The
ledger is debited before anything is admitted, so the cluster never admits more than the
limit; what it may admit less is what sits unspent in other replicas' leases, at most a
tenth of a bucket each, and for a second.

When the actor cannot be reached (it is being created, or died with the router replica
that created it), each router replica falls back to its own ledger with each limit
divided by the router replicas it was configured with (``router.deployment``'s
num_replicas, or autoscaling's max_replicas): the limits hold, more strictly than they
should, until the actor is back (fail closed to a per-replica share, never open).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.core.named_actor import NamedActor
from deployments.tenants.buckets import Grant, Limits, QuotaBook, Standing, burst
from deployments.tenants.rate_headers import RateLimited, rate_headers
from deployments.tenants.tenants_file import Tenant

logger = logging.getLogger("glm_serve.router")

LEASE_SHARE = 0.1
"""Part of a bucket a lease takes beyond what the request needs."""
LEASE_IDLE_S = 1.0
"""A lease unspent this long goes back to the ledger."""
FLUSH_S = 0.1
"""How often freed places and token debts go back to the ledger: a freed place held by one
replica would refuse the tenant on the others."""
CONCURRENT_RECHECK_S = 0.05
"""How long a tenant at its concurrency limit is refused here without asking the ledger
again (a place this replica frees ends it at once: the lease then holds the place)."""
PLACE_RENEW_S = 2.0
"""How often a replica tells the ledger the places it holds (they expire after
buckets.PLACE_TTL_S without it): a place lost on the way comes back within that."""
CALL_TIMEOUT_S = 1.0
"""Longest wait for the quota actor on a request's path; past it, the replica's own share."""


def quota_actor_name(app_name: str) -> str:
    """The actor's name: one ledger per application."""
    return f"glm-serve-tenants:{app_name}"


def tenant_limits(tenant: Tenant) -> Limits:
    """The tenant's limits by ledger kind (only those it has)."""
    limits = {"requests": tenant.requests_per_minute, "tokens": tenant.tokens_per_minute,
              "concurrent": tenant.max_concurrent_requests}
    return {kind: value for kind, value in limits.items() if value is not None}


class QuotaActor:
    """The ledger behind async methods: one event loop, so calls never interleave."""

    def __init__(self) -> None:
        self._book = QuotaBook()

    async def take(self, tenant: str, limits: Limits, need: dict[str, float], extra: dict[str, float],
                   holder: str | None = None) -> Grant:
        """:meth:`QuotaBook.take`."""
        return self._book.take(tenant, limits, need, extra, time.monotonic(), holder)

    async def give(self, returns: list[tuple[str, Limits, dict[str, float]]], holder: str | None = None) -> None:
        """:meth:`QuotaBook.give` for each (tenant, limits, amounts)."""
        now = time.monotonic()
        for tenant, limits, amounts in returns:
            self._book.give(tenant, limits, amounts, now, holder)

    async def renew(self, holder: str, places: dict[str, tuple[int, int]]) -> None:
        """:meth:`QuotaBook.renew`: what one ingress replica holds now."""
        self._book.renew(holder, places, time.monotonic())

    async def ping(self) -> bool:
        return True


@dataclass
class _Lease:
    """Units of one tenant this router replica holds from the ledger, unspent."""

    held: dict[str, float] = field(default_factory=dict)
    limits: Limits = field(default_factory=dict)
    """The tenant's limits when this replica last used the lease (the give-back names them)."""
    used_at: float = 0.0
    standing: dict[str, Standing] = field(default_factory=dict)
    standing_at: float = 0.0
    refused_until: dict[str, float] = field(default_factory=dict)
    """Per kind, until when the ledger said it has none: a tenant past its limit is refused
    here until then, without asking again (a flood costs the ledger one call per wait)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Ticket:
    """One request's hold on its tenant's units, released when the request ends."""

    tenant: Tenant
    limits: Limits
    local: bool = False
    """Taken from this replica's own share (the actor was unreachable)."""
    place: bool = False
    """Holds one of the tenant's concurrent places."""
    ledger_place: bool = False
    """That place came from the shared ledger (it goes back there, even if the ticket
    fell back to the local share for its tokens later)."""
    reserved_tokens: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    """OpenAI's x-ratelimit-* headers for the response."""


class TenantQuotas:
    """One router replica's enforcement of its tenants' limits."""

    def __init__(self, actor_name: str, router_replicas: int, clock: Callable[[], float] = time.monotonic,
                 actor: Any = None, on_fallback: Callable[[], None] | None = None) -> None:
        self.name = actor_name
        self.router_replicas = max(1, router_replicas)
        self._clock = clock
        self._link = NamedActor(actor_name, QuotaActor, (), "ping", "tenant quota actor",
                                f"each router replica enforces 1/{self.router_replicas} of each limit", logger)
        self._link.handle = actor  # given: tests drive replicas on one ledger without Ray
        # A replica that loses the ledger starts its share empty: the ledger may have just
        # handed out the burst, and a full share on every replica would hand it out again.
        self._local = QuotaBook(start_full=False)
        self._on_fallback = on_fallback
        self._leases: dict[str, _Lease] = {}
        self.holder = f"{actor_name}/{uuid.uuid4().hex[:16]}"
        """This replica's name on the ledger's places."""
        self._in_use: dict[str, tuple[int, int]] = {}
        """Per tenant: (its concurrency limit, ledger places held by requests running here)."""
        self._renewed_at = float("-inf")
        self._flusher: asyncio.Task | None = None
        self.fallbacks = 0
        """Requests admitted on this replica's own share because the actor was unreachable."""

    async def admit(self, tenant: Tenant) -> Ticket:
        """One request and one concurrent place for ``tenant``; :class:`RateLimited` (429)
        when its limits say no."""
        limits = tenant_limits(tenant)
        ticket = Ticket(tenant, limits)
        need = {kind: 1.0 for kind in ("requests", "concurrent") if kind in limits}
        if need:
            await self._take(ticket, need)
            ticket.place = "concurrent" in need
            if ticket.place and not ticket.local:
                ticket.ledger_place = True
                limit, count = self._in_use.get(tenant.name, (limits["concurrent"], 0))
                self._in_use[tenant.name] = (limits["concurrent"], count + 1)
        return ticket

    async def reserve_tokens(self, ticket: Ticket, tokens: int) -> None:
        """Reserve ``tokens`` (the most the request may generate) against the tenant's
        tokens per minute; settled in :meth:`finish` on prompt plus completion.

        A reservation takes at most one full bucket: a request that asks for more is
        admitted on a full bucket and pays the rest as debt when it ends, for what it
        really used. Reserving all it asked would refund the unused part (a max_tokens of
        10**15, say) into this replica's lease, which the tenant could then spend with no
        limit while it keeps the lease busy."""
        if "tokens" not in ticket.limits or tokens <= 0:
            return
        reserve = min(float(tokens), burst(ticket.limits["tokens"]))
        await self._take(ticket, {"tokens": reserve})
        ticket.reserved_tokens = reserve

    def finish(self, ticket: Ticket, used_tokens: int, refund_request: bool = False) -> None:
        """The request ended: free its place, and settle its tokens (what it reserved and did
        not use comes back; what it used beyond is owed). ``refund_request``: it was refused
        after its tenant's limits admitted it, so its request unit comes back too."""
        settle: dict[str, float] = {}
        if refund_request and "requests" in ticket.limits:
            settle["requests"] = 1.0
        if "tokens" in ticket.limits and (ticket.reserved_tokens or used_tokens):
            settle["tokens"] = ticket.reserved_tokens - used_tokens
            ticket.reserved_tokens = 0.0
        # Units go back where they came from: the local share for a ticket that fell back to
        # it, the ledger (through this replica's lease) otherwise; a place by where it was taken.
        ledger, local = ({}, settle) if ticket.local else (settle, {})
        if ticket.place:
            ticket.place = False
            (ledger if ticket.ledger_place else local)["concurrent"] = 1.0
            if ticket.ledger_place:
                self._release(ticket.tenant.name)
        now = self._clock()
        if local:
            self._local.give(ticket.tenant.name, self._local_limits(ticket.limits), local, now)
        if not ledger:
            return
        give = ledger
        lease = self._leases.setdefault(ticket.tenant.name, _Lease())
        lease.limits = ticket.limits
        for kind, amount in give.items():
            lease.held[kind] = lease.held.get(kind, 0.0) + amount
        lease.used_at = now
        self._flush_soon()

    def _release(self, tenant: str) -> None:
        limit, count = self._in_use.get(tenant, (0, 0))
        if count <= 1:
            self._in_use.pop(tenant, None)
        else:
            self._in_use[tenant] = (limit, count - 1)

    def _places_held(self) -> dict[str, tuple[int, int]]:
        """Per tenant, (limit, ledger places this replica holds): in running requests and in
        leases, unreturned."""
        places = dict(self._in_use)
        for name, lease in self._leases.items():
            spare = int(round(max(0.0, lease.held.get("concurrent", 0.0))))
            if spare and "concurrent" in lease.limits:
                limit, count = places.get(name, (lease.limits["concurrent"], 0))
                places[name] = (limit, count + spare)
        return places

    async def _take(self, ticket: Ticket, need: dict[str, float]) -> None:
        tenant = ticket.tenant
        if ticket.local or not await self._reachable():
            self._take_locally(ticket, need)
            return
        lease = self._leases.setdefault(tenant.name, _Lease())
        lease.limits = ticket.limits
        async with lease.lock:
            short = {k: v - lease.held.get(k, 0.0) for k, v in need.items() if lease.held.get(k, 0.0) < v}
            now = self._clock()
            blocked = [k for k in short if lease.refused_until.get(k, 0.0) > now]
            if blocked:
                kind = blocked[0]
                raise RateLimited(tenant.name, kind, ticket.limits[kind], lease.refused_until[kind] - now,
                                  self._headers(ticket.limits, lease))
            if short:
                extra = {kind: _lease_extra(kind, ticket.limits[kind]) for kind in short}
                try:
                    grant: Grant = await asyncio.wait_for(
                        self._actor.take.remote(tenant.name, ticket.limits, short, extra, self.holder), CALL_TIMEOUT_S)
                except Exception as exc:
                    self._lost(exc)
                    self._take_locally(ticket, need)
                    return
                lease.standing, lease.standing_at = grant.standing, self._clock()
                if grant.refused is not None:
                    # A place may free any moment, so a concurrency refusal is kept only
                    # briefly; it still answers a flood's queue on the lease lock at once.
                    wait_s = CONCURRENT_RECHECK_S if grant.refused == "concurrent" else grant.wait_s
                    lease.refused_until[grant.refused] = lease.standing_at + wait_s
                    raise self._refusal(ticket, grant)
                for kind, amount in grant.granted.items():
                    lease.held[kind] = lease.held.get(kind, 0.0) + amount
            for kind, amount in need.items():
                lease.held[kind] -= amount
            lease.used_at = self._clock()
            ticket.headers = self._headers(ticket.limits, lease)
        self._flush_soon()

    def _take_locally(self, ticket: Ticket, need: dict[str, float]) -> None:
        limits = self._local_limits(ticket.limits)
        grant = self._local.take(ticket.tenant.name, limits, need, {}, self._clock())
        if grant.refused is not None:
            raise self._refusal(ticket, grant)
        if not ticket.local:
            self.fallbacks += 1
            if self._on_fallback is not None:
                self._on_fallback()
        ticket.local = True
        ticket.headers = rate_headers(ticket.limits, grant.standing)

    def _local_limits(self, limits: Limits) -> Limits:
        return {kind: max(1, math.ceil(limit / self.router_replicas)) for kind, limit in limits.items()}

    def _refusal(self, ticket: Ticket, grant: Grant) -> RateLimited:
        kind = grant.refused or "requests"
        return RateLimited(ticket.tenant.name, kind, ticket.limits.get(kind, 0), grant.wait_s,
                           rate_headers(ticket.limits, grant.standing))

    def _headers(self, limits: Limits, lease: _Lease) -> dict[str, str]:
        elapsed = self._clock() - lease.standing_at
        standing = {}
        for kind, known in lease.standing.items():
            remaining = known.remaining + max(0.0, lease.held.get(kind, 0.0))
            rate = known.limit / 60.0
            remaining = min(remaining + elapsed * rate, burst(known.limit))
            standing[kind] = Standing(known.limit, remaining, max(0.0, known.reset_s - elapsed))
        return rate_headers(limits, standing)

    # The actor: found or created by name, given back idle leases in the background.

    @property
    def _actor(self) -> Any:
        return self._link.handle

    async def _reachable(self) -> bool:
        if self._actor is None:
            self._link.connect_soon()
        return self._actor is not None

    def _lost(self, exc: BaseException) -> None:
        self._link.lost(exc)
        self._leases.clear()  # the ledger they came from may be gone; a new one starts full

    def start(self) -> None:
        """Begin connecting (on the running loop) so the first request finds the actor."""
        self._link.connect_soon()

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_idle())

    async def _flush_idle(self) -> None:
        """Give back freed places and pay token debts within FLUSH_S, and give back every
        lease idle for LEASE_IDLE_S."""
        while (self._leases or self._in_use) and self._actor is not None:
            await asyncio.sleep(FLUSH_S)
            now = self._clock()
            if now - self._renewed_at >= PLACE_RENEW_S:
                self._renewed_at = now
                try:
                    await asyncio.wait_for(self._actor.renew.remote(self.holder, self._places_held()), 5.0)
                except Exception as exc:
                    self._lost(exc)
                    return
            returns = []
            for name, lease in list(self._leases.items()):
                if lease.lock.locked():
                    continue
                idle = now - lease.used_at >= LEASE_IDLE_S
                amounts = {k: v for k, v in lease.held.items() if v != 0 and (idle or v < 0 or k == "concurrent")}
                for kind, held in lease.held.items():
                    # A refund beyond the lease's share goes back now, not when the lease
                    # idles: a tenant with a request a second would keep it otherwise.
                    share = _lease_extra(kind, lease.limits[kind]) if kind in lease.limits else 0.0
                    if kind not in amounts and kind != "concurrent" and held > share:
                        amounts[kind] = held - share
                if not amounts:
                    if idle:
                        del self._leases[name]
                    continue
                limits = {kind: lease.limits[kind] for kind in amounts if kind in lease.limits}
                for kind in amounts:
                    lease.held[kind] -= amounts[kind]
                returns.append((name, limits, amounts))
            if returns and self._actor is not None:
                try:
                    await asyncio.wait_for(self._actor.give.remote(returns, self.holder), 5.0)
                except Exception as exc:
                    self._lost(exc)


def _lease_extra(kind: str, limit: int) -> float:
    if kind == "concurrent":
        return 0.0  # places come back to the lease as requests end
    extra = burst(limit) * LEASE_SHARE
    return float(math.floor(extra)) if kind == "requests" else extra
