"""The adapter catalog (deployments/lora/catalog.py): names to folders, looked up on each call."""

from __future__ import annotations

import os

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
