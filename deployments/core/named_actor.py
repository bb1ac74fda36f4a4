"""A named Ray actor that every router replica of an application shares: found, or
created, on first need, and looked for again after it is lost.

Both of glm-serve's shared actors live this way: the placement table
(:mod:`deployments.routing.placement_service`) and the tenants' ledger
(:mod:`deployments.tenants.quota_service`). Neither is detached: it dies with the router
replica that created it, and the next router replica that needs it creates it again.
Meanwhile each does without it in its own way (``while_away``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

RETRY_S = 5.0
"""Least time between two attempts to reach (or create) the actor."""
CONNECT_TIMEOUT_S = 30.0
"""How long a new actor may take to answer its first call (it may be starting a worker)."""


class NamedActor:
    """The handle to actor ``name`` of ``actor_class(*args)``, once it answered its
    ``ready_method``; None until then, and after :meth:`lost`."""

    def __init__(self, name: str, actor_class: type, args: tuple, ready_method: str, what: str,
                 while_away: str, logger: logging.Logger, on_ready: Callable[[], None] | None = None) -> None:
        self.name, self._class, self._args, self._ready = name, actor_class, args, ready_method
        self._what, self._while_away, self._logger, self._on_ready = what, while_away, logger, on_ready
        self.handle: Any = None
        self._connecting: asyncio.Task | None = None
        self._last_attempt = float("-inf")

    def connect_soon(self) -> None:
        """Start looking for the actor on the running loop, unless a look is under way or
        the last began less than RETRY_S ago."""
        now = time.monotonic()
        if (self._connecting is not None and not self._connecting.done()) or now - self._last_attempt < RETRY_S:
            return
        self._last_attempt = now
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def lost(self, exc: BaseException) -> None:
        """A call failed: do without the actor until it is found again."""
        if self.handle is not None:
            self._logger.warning("%s %s lost (%s); %s until it is back", self._what, self.name,
                                 type(exc).__name__, self._while_away)
        self.handle = None

    async def _connect(self) -> None:
        try:
            # Creating or looking up a named actor talks to the GCS synchronously.
            actor = await asyncio.get_running_loop().run_in_executor(None, self._get_or_create)
            await asyncio.wait_for(getattr(actor, self._ready).remote(), CONNECT_TIMEOUT_S)
        except Exception as exc:
            self._logger.warning("%s %s unavailable (%s: %s); %s", self._what, self.name, type(exc).__name__, exc,
                                 self._while_away)
            return
        self.handle = actor
        if self._on_ready is not None:
            self._on_ready()

    def _get_or_create(self) -> Any:
        if not ray.is_initialized():  # driven outside Ray (unit tests): never start a cluster
            raise RuntimeError("Ray is not initialized")
        return ray.remote(self._class).options(
            name=self.name, get_if_exists=True, num_cpus=0, max_concurrency=1000).remote(*self._args)
