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
