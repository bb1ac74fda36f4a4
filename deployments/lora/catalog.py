"""Which LoRA adapters this service has, by name: ``model.lora.adapters`` and the folders of
``model.lora.adapters_dir``.

The router uses it to accept a request's ``model`` and to list ``/v1/models``; each engine
replica uses it to find an adapter's files. Both read the same paths (local on every node,
or a shared mount). ``adapters_dir`` is read when asked, never cached: an adapter copied in
is served at once, one removed is gone at once. A name is a folder name, checked against
:data:`~deployments.config.ADAPTER_NAME` before it touches the file system, so a request
cannot name a path (``..``, ``/``) outside the folder.

The file system is asked from a small pool of threads of the catalog's own, never on the
event loop, and within :data:`LOOKUP_TIMEOUT_S`: a shared mount that hangs costs the
requests that name an adapter a 503, not the ingress's or the engine's loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from deployments.config import ADAPTER_NAME, LoraConfig
from deployments.core.errors import APIError

T = TypeVar("T")

LOOKUP_TIMEOUT_S = 2.0
"""Longest wait for the adapters' files to answer one lookup."""
LOOKUP_THREADS = 4
"""Threads a catalog asks the file system from: a hung mount ties up these, nothing else."""

ADAPTER_CONFIG = "adapter_config.json"
"""What makes a folder a PEFT adapter."""


@dataclass(frozen=True, slots=True)
class Adapter:
    """One adapter as found now: its name, folder, and a version that changes when its files do."""

    name: str
    path: Path
    version: tuple[int, int]
    """(mtime_ns, size) of its adapter_config.json plus weights: a new copy is a new version."""


class AdapterCatalog:
    """The adapters of one model, looked up on each call. Empty without ``model.lora``."""

    def __init__(self, lora: LoraConfig | None) -> None:
        self._configured = {name: Path(path) for name, path in (lora.adapters if lora else {}).items()}
        self._dir = Path(lora.adapters_dir) if lora and lora.adapters_dir else None
        self._pool: ThreadPoolExecutor | None = None

    async def lookup(self, name: str) -> Adapter | None:
        """:meth:`find`, off the event loop and bounded (503 past :data:`LOOKUP_TIMEOUT_S`)."""
        return await self._off_loop(self.find, name)

    async def list_names(self) -> list[str]:
        """:meth:`names`, off the event loop and bounded."""
        return await self._off_loop(self.names)

    async def _off_loop(self, call: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="adapter-lookup")
        future = asyncio.get_running_loop().run_in_executor(self._pool, call, *args)
        try:
            return await asyncio.wait_for(future, LOOKUP_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(503, "The adapters' storage did not answer in time.", "service_unavailable") from None

    @property
    def enabled(self) -> bool:
        return bool(self._configured) or self._dir is not None

    def find(self, name: str) -> Adapter | None:
        """The adapter called ``name`` now, or None (no such name, or its folder has no
        adapter_config.json)."""
        if not ADAPTER_NAME.fullmatch(name):
            return None
        path = self._configured.get(name)
        if path is None and self._dir is not None:
            path = self._dir / name
        if path is None:
            return None
        version = _version(path)
        return None if version is None else Adapter(name, path, version)

    def names(self) -> list[str]:
        """Every adapter's name, sorted: the configured ones and the folders of adapters_dir."""
        found = {name for name, path in self._configured.items() if _version(path) is not None}
        if self._dir is not None:
            try:
                entries = list(os.scandir(self._dir))
            except OSError:
                entries = []
            for entry in entries:
                if ADAPTER_NAME.fullmatch(entry.name) and _version(Path(entry.path)) is not None:
                    found.add(entry.name)
        return sorted(found)


def _version(path: Path) -> tuple[int, int] | None:
    """(latest mtime_ns, total size) of the adapter's files; None when it is not an adapter."""
    try:
        config = (path / ADAPTER_CONFIG).stat()
    except OSError:
        return None
    mtime, size = config.st_mtime_ns, config.st_size
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        try:
            st = (path / weights).stat()
        except OSError:
            continue
        mtime, size = max(mtime, st.st_mtime_ns), size + st.st_size
    return mtime, size
