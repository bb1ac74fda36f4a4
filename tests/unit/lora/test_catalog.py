"""The adapter catalog (deployments/lora/catalog.py): names to folders, looked up on each call."""

from __future__ import annotations

import asyncio
import os

import pytest

from deployments.config import LoraConfig
from deployments.lora.catalog import AdapterCatalog
from tests.support.lora import write_adapter


def test_the_catalog_finds_configured_adapters_and_folders_and_nothing_outside(tmp_path):
    write_adapter(tmp_path / "configured")
    write_adapter(tmp_path / "dir" / "found")
    (tmp_path / "dir" / "not-an-adapter").mkdir()
    write_adapter(tmp_path / "outside")
    catalog = AdapterCatalog(LoraConfig(adapters={"configured": str(tmp_path / "configured")},
                                        adapters_dir=str(tmp_path / "dir")))
    assert catalog.names() == ["configured", "found"]
    assert catalog.find("found").path == tmp_path / "dir" / "found"
    for name in ("not-an-adapter", "../outside", "..", "missing", "", "a/b"):
        assert catalog.find(name) is None, name
    write_adapter(tmp_path / "dir" / "later")  # copied in: found at once
    assert "later" in catalog.names() and catalog.find("later") is not None
    assert not AdapterCatalog(None).enabled and AdapterCatalog(None).names() == []


def test_a_new_copy_of_an_adapter_is_a_new_version(tmp_path):
    write_adapter(tmp_path / "a")
    catalog = AdapterCatalog(LoraConfig(adapters_dir=str(tmp_path)))
    before = catalog.find("a").version
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(before[0] + 10**9, before[0] + 10**9))
    assert catalog.find("a").version != before


def test_a_hung_store_costs_a_503_not_the_event_loop(tmp_path, monkeypatch):
    import threading
    import time

    import deployments.lora.catalog as module
    from deployments.core.errors import APIError

    monkeypatch.setattr(module, "LOOKUP_TIMEOUT_S", 0.2)
    release = threading.Event()
    catalog = AdapterCatalog(LoraConfig(adapters_dir=str(tmp_path)))
    monkeypatch.setattr(catalog, "find", lambda name: release.wait(5))  # a mount that does not answer

    async def main():
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.ensure_future(heartbeat())
        started = time.monotonic()
        with pytest.raises(APIError) as info:
            await catalog.lookup("a")
        beat.cancel()
        return info.value.status, time.monotonic() - started, ticks

    try:
        status, waited, ticks = asyncio.run(main())
    finally:
        release.set()
    assert status == 503 and waited < 1.0
    assert ticks >= 10, "the loop kept running while the lookup hung"
