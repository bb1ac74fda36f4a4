"""An engine replica's adapter bookkeeping (deployments/engine/adapters.py): load first, refuse
by name, count loads and evictions."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import LoraConfig
from deployments.core.engine_snapshot import EngineSnapshot
from deployments.core.errors import APIError
from deployments.engine.adapters import EngineAdapters
from deployments.lora.catalog import AdapterCatalog
from tests.support.lora import write_adapter


class _Engine:
    """What EngineAdapters uses of vLLM's AsyncLLM, with its LRU of ``capacity`` adapters and
    its refusal of a bad adapter (the real engine: tests/e2e/test_lora.py)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.loaded, self.calls = capacity, [], 0

    async def add_lora(self, request) -> bool:
        self.calls += 1
        await asyncio.sleep(0.01)
        if "broken" in request.lora_path:
            raise RuntimeError(f"Call to add_lora method failed: Worker failed with error 'Loading lora "
                               f"broken failed: No adapter found for {request.lora_path}', please check the stack")
        if request.lora_int_id not in self.loaded:
            self.loaded.append(request.lora_int_id)
            if len(self.loaded) > self.capacity:
                self.loaded.pop(0)
        return True

    async def list_loras(self) -> set[int]:
        return set(self.loaded)


def test_adapters_load_once_count_evictions_and_refuse_a_broken_one_by_name(tmp_path):
    for name in ("a", "b", "c", "broken"):
        write_adapter(tmp_path / name)
    engine = _Engine(capacity=2)
    adapters = EngineAdapters(engine, AdapterCatalog(LoraConfig(adapters_dir=str(tmp_path), max_cpu_loras=2)))

    async def run() -> None:
        await asyncio.gather(*(adapters.lora_request("a") for _ in range(5)))  # concurrent: one load
        assert engine.calls == 1
        await adapters.lora_request("b")
        await adapters.lora_request("c")  # evicts a
        for _ in range(2):
            with pytest.raises(APIError) as info:
                await adapters.lora_request("broken")
            assert info.value.status == 400 and "`broken`" in info.value.message
            assert str(tmp_path) not in info.value.message
        with pytest.raises(APIError) as info:
            await adapters.lora_request("missing")
        assert info.value.status == 404

    asyncio.run(run())
    assert engine.calls == 4, "a refused adapter is not tried again until its files change"
    assert adapters.resident() == ["b", "c"]
    report = adapters.report(EngineSnapshot())
    assert report.adapters == ("b", "c")
    assert {name: (c.loads, c.evictions) for name, c in report.adapter_counts.items()} == {
        "a": (1, 1), "b": (1, 0), "c": (1, 0)}


def test_a_failed_load_is_remembered_for_a_while_and_no_path_reaches_the_client(tmp_path):
    import deployments.engine.adapters as module

    write_adapter(tmp_path / "broken")
    (tmp_path / "link").symlink_to(tmp_path)  # the configured path, not the resolved one
    engine = _Engine(capacity=2)
    configured = tmp_path / "link" / "broken"
    now = [1000.0]
    adapters = EngineAdapters(engine, AdapterCatalog(LoraConfig(adapters={"broken": str(configured)})),
                              clock=lambda: now[0])

    async def refused() -> str:
        with pytest.raises(APIError) as info:
            await adapters.lora_request("broken")
        return info.value.message

    message = asyncio.run(refused())
    for form in (str(tmp_path), str(configured), "link/broken", "/broken"):
        assert form not in message, message
    asyncio.run(refused())
    assert engine.calls == 1, "refused from memory"
    now[0] += module.FAILED_LOAD_TTL_S + 1
    asyncio.run(refused())
    assert engine.calls == 2, "tried once more after FAILED_LOAD_TTL_S"


def test_reasons_lose_every_path_relative_or_resolved(tmp_path):
    from deployments.engine.adapters import _reason
    from deployments.lora.catalog import Adapter

    adapter = Adapter("sql", tmp_path / "sql", (0, 0))
    error = RuntimeError(f"Worker failed with error 'cannot open {tmp_path}/sql/adapter_model.bin and "
                         "../shared/x.json or ./y: rank 32 > 16', please check the stack")
    reason = _reason(error, adapter)
    assert "/" not in reason and "rank 32 > 16" in reason, reason


def test_a_tenant_cycling_adapters_meets_its_own_budget_of_loads(tmp_path):
    for name in ("a", "b", "c", "d"):
        write_adapter(tmp_path / name)
    engine = _Engine(capacity=1)
    now = [0.0]
    adapters = EngineAdapters(engine, AdapterCatalog(LoraConfig(adapters_dir=str(tmp_path))), clock=lambda: now[0])

    async def run() -> APIError:
        await adapters.lora_request("a", "cycler", 10)  # a bucket of 1 (6 s of 10 a minute)
        await adapters.lora_request("a", "cycler", 10)  # held already: no load, no charge
        with pytest.raises(APIError) as info:
            await adapters.lora_request("b", "cycler", 10)
        await adapters.lora_request("c", "quiet", 10)  # another tenant's budget is its own
        await adapters.lora_request("d")  # and requests without a tenant are not limited
        now[0] += 6.0  # one load a 6 s
        await adapters.lora_request("b", "cycler", 10)
        return info.value

    refusal = asyncio.run(run())
    assert refusal.status == 429 and refusal.code == "adapter_loads_exceeded"
    assert 6.0 <= int(refusal.headers()["retry-after-ms"]) / 1000 <= 6.01, refusal.headers()
    assert engine.calls == 4, "the refused request caused no load"
    import pickle
    assert pickle.loads(pickle.dumps(refusal)).headers() == refusal.headers(), "it crosses Ray whole"
