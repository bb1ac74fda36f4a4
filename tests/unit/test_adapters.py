"""The adapter catalog (names to folders, looked up on each call) and an engine replica's
adapter bookkeeping (load first, refuse by name, count loads and evictions)."""

from __future__ import annotations

import asyncio
import os

import pytest

from deployments.core.engine_snapshot import EngineSnapshot
from pydantic import ValidationError

from deployments.config import LoraConfig, ModelConfig
from deployments.core.errors import APIError
from deployments.engine.adapters import EngineAdapters
from deployments.lora.catalog import AdapterCatalog


def _adapter(path, weights: bytes = b"w") -> None:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)


def test_the_catalog_finds_configured_adapters_and_folders_and_nothing_outside(tmp_path):
    _adapter(tmp_path / "configured")
    _adapter(tmp_path / "dir" / "found")
    (tmp_path / "dir" / "not-an-adapter").mkdir()
    _adapter(tmp_path / "outside")
    catalog = AdapterCatalog(LoraConfig(adapters={"configured": str(tmp_path / "configured")},
                                        adapters_dir=str(tmp_path / "dir")))
    assert catalog.names() == ["configured", "found"]
    assert catalog.find("found").path == tmp_path / "dir" / "found"
    for name in ("not-an-adapter", "../outside", "..", "missing", "", "a/b"):
        assert catalog.find(name) is None, name
    _adapter(tmp_path / "dir" / "later")  # copied in: found at once
    assert "later" in catalog.names() and catalog.find("later") is not None
    assert not AdapterCatalog(None).enabled and AdapterCatalog(None).names() == []


def test_a_new_copy_of_an_adapter_is_a_new_version(tmp_path):
    _adapter(tmp_path / "a")
    catalog = AdapterCatalog(LoraConfig(adapters_dir=str(tmp_path)))
    before = catalog.find("a").version
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(before[0] + 10**9, before[0] + 10**9))
    assert catalog.find("a").version != before


def test_lora_config_names_its_errors():
    with pytest.raises(ValidationError, match="max_lora_rank"):
        LoraConfig(max_lora_rank=12)
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        LoraConfig(max_loras=4, max_cpu_loras=2)
    with pytest.raises(ValidationError, match="adapter name"):
        LoraConfig(adapters={"../x": "/p"})
    with pytest.raises(ValidationError, match="base model's own name"):
        ModelConfig(model="/m/base", lora={"adapters": {"base": "/p"}})
    with pytest.raises(ValidationError, match="use model.lora"):
        ModelConfig(model="/m/base", engine_kwargs={"enable_lora": True})
    args = ModelConfig(model="/m/base", lora={"max_loras": 2, "max_cpu_loras": 4}).engine_args()
    assert (args["enable_lora"], args["max_loras"], args["max_cpu_loras"], args["max_lora_rank"]) == (True, 2, 4, 16)


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
        _adapter(tmp_path / name)
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
