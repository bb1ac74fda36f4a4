"""Router replicas' leases on one ledger (deployments/tenants/quota_service.py), driven on a
clock the test moves."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.tenants.quota_service import QuotaActor, TenantQuotas
from deployments.tenants.rate_headers import RateLimited
from deployments.tenants.tenants_file import Tenant, hash_key


def _tenant(name: str = "t", **limits) -> Tenant:
    return Tenant(name=name, keys=[hash_key(name)], **limits)


class _InProcess:
    """The quota actor's own class, its methods reached as ``.remote`` like an actor handle's:
    several TenantQuotas (router replicas) in one test share one ledger."""

    def __init__(self, clock):
        self.actor = QuotaActor()
        self.calls = 0
        import deployments.tenants.quota_service as service
        self._service = service
        self._clock = clock
        outer = self

        class _Method:
            def __init__(self, name):
                self.name = name

            def remote(self, *args):
                outer.calls += 1
                return outer._call(self.name, args)

        self.take, self.give = _Method("take"), _Method("give")

    async def _call(self, name, args):
        # The actor reads time.monotonic; the test's clock stands in for it.
        self._service.time.monotonic, real = self._clock, self._service.time.monotonic
        try:
            return await getattr(self.actor, name)(*args)
        finally:
            self._service.time.monotonic = real


def _run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("per_second", [5, 30, 100])
def test_two_router_replicas_admit_the_limit_between_them_within_a_tenth_over_a_minute(per_second):
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(requests_per_minute=600)

    async def scenario():
        routers = [TenantQuotas("q", 2, clock=clock, actor=shared) for _ in range(2)]
        admitted = refused = 0
        # Requests alternating between the replicas for 2 minutes: half, 3x and 10x the limit.
        for step in range(120 * per_second):
            now[0] = step / per_second
            try:
                ticket = await routers[step % 2].admit(tenant)
            except RateLimited as exc:
                refused += 1
                assert exc.status == 429 and float(exc.headers()["retry-after-ms"]) > 0
                continue
            admitted += 1
            routers[step % 2].finish(ticket, 0)
        return admitted, refused

    admitted, refused = _run(scenario())
    offered = 120 * per_second
    limit = 600 * 2  # two minutes
    if offered < limit:
        assert (admitted, refused) == (offered, 0)
    else:
        assert limit * 0.9 <= admitted <= limit * 1.1, admitted
    # Leases of 7: a grant and a refusal per lease and replica at most, however many are offered.
    assert shared.calls < admitted / 2, "most requests are admitted from a lease, not by asking the ledger"


def test_tokens_are_reserved_then_settled_and_usage_past_the_reservation_is_owed():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(tokens_per_minute=6000)  # a burst of 600

    async def scenario():
        quotas = TenantQuotas("q", 1, clock=clock, actor=shared)
        first = await quotas.admit(tenant)
        await quotas.reserve_tokens(first, 500)
        second = await quotas.admit(tenant)
        with pytest.raises(RateLimited) as info:
            await quotas.reserve_tokens(second, 500)  # 500 reserved of 600: 100 left
        assert info.value.kind == "tokens" and info.value.type == "tokens"
        quotas.finish(first, used_tokens=50)  # 450 come back
        quotas.finish(second, 0)
        third = await quotas.admit(tenant)
        await quotas.reserve_tokens(third, 500)
        quotas.finish(third, used_tokens=2000)  # a long prompt: 1500 owed
        fourth = await quotas.admit(tenant)
        with pytest.raises(RateLimited):
            await quotas.reserve_tokens(fourth, 10)
        now[0] += 20  # 2000 refilled: out of debt
        await quotas.reserve_tokens(fourth, 10)

    _run(scenario())


def test_concurrency_counts_a_request_until_it_finishes():
    clock = lambda: 0.0  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(max_concurrent_requests=2)

    async def scenario():
        routers = [TenantQuotas("q", 2, clock=clock, actor=shared) for _ in range(2)]
        a = await routers[0].admit(tenant)
        await routers[1].admit(tenant)
        with pytest.raises(RateLimited) as info:
            await routers[0].admit(tenant)
        assert info.value.kind == "concurrent"
        routers[0].finish(a, 0)
        await routers[0].admit(tenant)  # the place a freed, from router 0's lease

    _run(scenario())


def test_without_the_ledger_each_replica_enforces_its_share_starting_empty():
    tenant = _tenant(requests_per_minute=120)  # a burst of 12; 6 per replica of 2, filling at 1/s
    now = [0.0]
    fallbacks = []

    async def scenario():
        # No Ray here: the actor is out of reach.
        quotas = TenantQuotas("q", 2, clock=lambda: now[0], on_fallback=lambda: fallbacks.append(1))
        with pytest.raises(RateLimited):
            await quotas.admit(tenant)
        now[0] = 60.0
        for _ in range(6):
            ticket = await quotas.admit(tenant)
            assert ticket.local and ticket.headers["x-ratelimit-limit-requests"] == "120"
        with pytest.raises(RateLimited):
            await quotas.admit(tenant)
        assert quotas.fallbacks == len(fallbacks) == 6

    _run(scenario())


def test_a_reservation_past_the_bucket_cannot_turn_the_tokens_limit_off(monkeypatch):
    """The attack: max_tokens 10**15 on a full bucket, used for 10 tokens, then a request a
    second. Reserved whole, the unused 10**15 came back into the replica's lease, which a
    request a second kept from idling: every later request was served from it, unlimited."""
    import deployments.tenants.quota_service as service

    monkeypatch.setattr(service, "FLUSH_S", 0.001)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(tokens_per_minute=600)  # 10 tokens a second, a bucket of 60

    async def scenario():
        quotas = TenantQuotas("q", 1, clock=clock, actor=shared)
        first = await quotas.admit(tenant)
        await quotas.reserve_tokens(first, 10**15)
        assert first.reserved_tokens == 60, "one reservation takes at most a full bucket"
        quotas.finish(first, used_tokens=10)
        used = 10
        for second in range(1, 121):  # two minutes of a request a second, each of 60 tokens
            now[0] = float(second)
            await asyncio.sleep(0.005)  # the flusher's turn: the refund past the lease's share goes back
            ticket = await quotas.admit(tenant)
            try:
                await quotas.reserve_tokens(ticket, 60)
            except RateLimited:
                quotas.finish(ticket, 0)
                continue
            quotas.finish(ticket, used_tokens=60)
            used += 60
        return used

    used = _run(scenario())
    assert used <= 1200 * 1.1 + 60, f"{used} tokens in two minutes against a limit of 600 a minute"
    assert used >= 1200 * 0.8, "the limit still admits what it allows"


def test_a_flood_past_a_tenants_concurrency_is_refused_from_a_cached_answer():
    """400 excess requests at once from a tenant at its concurrency limit: they queue on the
    tenant's lease lock; the first refusal is kept briefly, so the rest are refused without
    a ledger round trip each (and, in the ingress, before any shared place is taken)."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(max_concurrent_requests=4)

    async def scenario():
        quotas = TenantQuotas("q", 1, clock=clock, actor=shared)
        held = [await quotas.admit(tenant) for _ in range(4)]
        calls = shared.calls
        results = await asyncio.gather(*(quotas.admit(tenant) for _ in range(400)), return_exceptions=True)
        assert all(isinstance(r, RateLimited) and r.kind == "concurrent" for r in results)
        assert shared.calls - calls <= 2, f"{shared.calls - calls} ledger calls for 400 refusals"
        quotas.finish(held[0], 0)  # a place freed here is taken at once, cached refusal or not
        await quotas.admit(tenant)
        now[0] += 1.0  # and one freed elsewhere within CONCURRENT_RECHECK_S
        with pytest.raises(RateLimited):
            await quotas.admit(tenant)

    _run(scenario())


def test_a_request_refused_after_its_tenants_limits_gets_its_request_back():
    clock = lambda: 0.0  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(requests_per_minute=60)  # a burst of 6

    async def scenario():
        quotas = TenantQuotas("q", 1, clock=clock, actor=shared)
        for _ in range(20):  # the service's own cap refuses each: the tenant pays none
            quotas.finish(await quotas.admit(tenant), 0, refund_request=True)
        for _ in range(6):
            await quotas.admit(tenant)
        with pytest.raises(RateLimited):
            await quotas.admit(tenant)

    _run(scenario())


def test_long_prompts_with_max_tokens_1_need_a_full_bucket_each():
    """The attack: many near-max_model_len prompts at once, each asking for one token, on a
    bucket with a little left. Reserving max_tokens alone admitted one per token left, all
    charged only after they ran; the prompt is reserved too now (bounded by its characters
    at the ingress), so they need a full bucket each."""
    clock = lambda: 0.0  # noqa: E731
    shared = _InProcess(clock)
    tenant = _tenant(tokens_per_minute=600)  # a bucket of 60

    async def scenario():
        quotas = TenantQuotas("q", 1, clock=clock, actor=shared)
        first = await quotas.admit(tenant)
        await quotas.reserve_tokens(first, 30)  # half the bucket in use

        async def long_prompt() -> bool:
            ticket = await quotas.admit(tenant)
            try:
                await quotas.reserve_tokens(ticket, 4000 + 1)  # a 4,000-character prompt, max_tokens 1
            except RateLimited:
                return False
            return True

        return sum(await asyncio.gather(*(long_prompt() for _ in range(40))))

    assert _run(scenario()) == 0, "a long prompt waits for a full bucket"


class _Faulty(_InProcess):
    """The ledger behind a link that loses answers: a take that ran but whose answer timed
    out, a give-back that failed after the replica let go of its units."""

    def __init__(self, clock, rng, p_timeout: float, p_give_fail: float):
        super().__init__(clock)
        self.rng, self.p_timeout, self.p_give_fail = rng, p_timeout, p_give_fail
        outer = self

        class _Renew:
            def remote(self, *args):
                return outer._call("renew", args)

        self.renew = _Renew()

    async def _call(self, name, args):
        if name == "give" and self.rng.random() < self.p_give_fail:
            raise ConnectionError("the give-back was lost")
        result = await super()._call(name, args)
        if name == "take" and self.rng.random() < self.p_timeout:
            raise asyncio.TimeoutError("the take ran, its answer was lost")
        return result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["admit", "finish", "wait"]), st.integers(0, 1)), max_size=40),
       p_timeout=st.sampled_from([0.0, 0.2, 0.5]), p_give_fail=st.sampled_from([0.0, 0.3]),
       rng=st.randoms(use_true_random=False))
def test_no_place_is_lost_or_made_whatever_the_link_loses(ops, p_timeout, p_give_fail, rng):
    """Random admits, finishes and waits on two ingress replicas over a link that loses
    takes' answers and give-backs: once every request has ended, the ledger holds no place
    (a lost one came back by itself) and the tenant gets its whole concurrency again."""
    import deployments.tenants.quota_service as service
    from deployments.tenants.buckets import PLACE_TTL_S

    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    shared = _Faulty(clock, rng, p_timeout, p_give_fail)
    tenant = _tenant(max_concurrent_requests=3)
    flush, service.FLUSH_S = service.FLUSH_S, 0.001

    async def scenario():
        routers = [TenantQuotas("q", 2, clock=clock, actor=shared) for _ in range(2)]
        running: list[tuple[int, object]] = []
        for op, which in ops:
            for router in routers:
                router._link.handle = shared  # a lost ledger is found again
            if op == "admit":
                try:
                    running.append((which, await routers[which].admit(tenant)))
                except RateLimited:
                    pass
            elif op == "finish" and running:
                i, ticket = running.pop(rng.randrange(len(running)))
                routers[i].finish(ticket, 0)
            now[0] += 0.5
            await asyncio.sleep(0.003)
        for i, ticket in running:
            routers[i].finish(ticket, 0)
        shared.p_give_fail = shared.p_timeout = 0.0
        for _ in range(int(PLACE_TTL_S / 0.5) + 8):  # the places' leases run out
            for router in routers:
                router._link.handle = shared
                router._flush_soon()
            now[0] += 0.5
            await asyncio.sleep(0.003)
        pool = shared.actor._book._pools.get(tenant.name)
        if pool is not None:
            pool.expire(now[0])
            assert pool.out == 0, f"places still out after every request ended: {pool.holders}"
        fresh = TenantQuotas("q", 2, clock=clock, actor=shared)
        for _ in range(3):
            await fresh.admit(tenant)

    try:
        _run(scenario())
    finally:
        service.FLUSH_S = flush
