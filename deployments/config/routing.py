"""``engine.routing``: how requests pick an engine replica.

The shipped routing policies are named here by import path, not imported: the policy
registry (:mod:`deployments.routing.policy`) loads one on first use, as vLLM's
tool-parser table does, so config stays below routing in the layers and nothing imports
in a circle. A plug-in policy is an import path too, imported and checked here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chat_formats.plugins import import_object

BUILTIN_POLICIES: dict[str, str] = {
    "pow2": "deployments.routing.pow2_policy:Pow2Policy",
    "prefix": "deployments.routing.prefix_policy:PrefixPolicy",
}
"""The shipped routing policies: name to import path."""

POLICY_BASE = "deployments.routing.policy:RoutingPolicy"
"""The class every routing policy derives from."""


def check_policy_name(name_or_path: str) -> str:
    """``name_or_path`` if it is a shipped policy's name or the import path of an existing
    :data:`POLICY_BASE` subclass (``module:Class`` or ``module.Class``); ValueError naming
    the known ones otherwise."""
    if name_or_path in BUILTIN_POLICIES:
        return name_or_path
    cls = import_object("routing policy", name_or_path, sorted(BUILTIN_POLICIES))
    # By the base's import path, not the class: config sits below routing in the layers.
    if not isinstance(cls, type) or POLICY_BASE not in {f"{c.__module__}:{c.__qualname__}" for c in cls.__mro__}:
        raise ValueError(f"routing policy {name_or_path!r} is not a RoutingPolicy subclass")
    return name_or_path


def overloaded(load: float, least: float, gap: float, factor: float) -> bool:
    """The load guard, one formula for the policy and the placement table: ``load`` exceeds
    ``least`` by more than ``gap`` and by more than ``factor`` times."""
    return load - least > gap and load > factor * least


class RoutingConfig(BaseModel):
    """How requests pick an engine replica. Unknown fields are errors, as in
    :mod:`deployments.config` (whose ``StrictModel`` this mirrors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(
        default="pow2",
        description=(
            "'pow2': Serve's power-of-two-choices router (load only). 'prefix': send a conversation's next turn "
            "to the engine replica that holds its prefix in vLLM's prefix cache (docs/routing.md). Or the import "
            "path ('module:Class') of a RoutingPolicy subclass of your own (deployments/routing/policy.py)."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of a plug-in policy, handed to it as they are (it validates them); the shipped "
                    "policies take none.",
    )
    max_entries: int = Field(
        default=100_000, ge=16, le=10_000_000,
        description="Most prefix records one router replica keeps (LRU). What they cost in memory: docs/scaling.md.",
    )
    chars_per_block: int = Field(
        default=256, ge=16, le=65_536,
        description="Characters per block of a completion string prompt.",
    )
    tokens_per_block: int = Field(
        default=64, ge=4, le=16_384,
        description="Token ids per block of a completion token-id prompt.",
    )
    min_match_blocks: int = Field(
        default=1, ge=1, le=4096,
        description="Fewest blocks a prefix needs to identify a conversation (chat: messages, the first user "
                    "message is always required; completions: chunks).",
    )
    shared_fanout: int = Field(
        default=4, ge=1, le=64,
        description="A prefix that more than this many conversations went through is shared (a common opener, "
                    "a few-shot head) and no longer pins conversations to a replica.",
    )
    max_load_gap: int = Field(
        default=8, ge=0,
        description="The preferred replica is skipped only when its ongoing requests exceed the least-loaded "
                    "replica's by more than this many and by more than max_load_factor times.",
    )
    max_load_factor: float = Field(
        default=1.5, ge=1.0,
        description="The relative half of the load guard (see max_load_gap): with 100 ongoing on the least-loaded "
                    "replica, the preferred one is skipped above 150, not at 109.",
    )
    replicas_per_entry: int = Field(
        default=2, ge=1, le=8,
        description="Replicas remembered per prefix (most recent first); the others are spill targets.",
    )
    max_age_s: float | None = Field(
        default=None, gt=0,
        description="Ignore a record older than this (vLLM has probably evicted it). None: no age limit.",
    )
    directory: bool = Field(
        default=True,
        description="Share where each conversation lives between router replicas through one small Ray actor per "
                    "engine deployment, which places a new conversation on the least-loaded replica (ongoing requests "
                    "plus conversations placed lately). False: "
                    "each router places it by rendezvous hashing of its prefix, with no shared state.",
    )
    placement_memory_s: float = Field(
        default=60.0, gt=0, le=86_400,
        description="The shared placement table counts each conversation it gave a replica as load to come, "
                    "with weight exp(-age / placement_memory_s), on top of the replica's ongoing requests.",
    )
    directory_timeout_s: float = Field(
        default=0.1, gt=0, le=10,
        description="How long a router waits for the shared placement table before placing the conversation "
                    "by rendezvous hashing instead.",
    )
    stats_period_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="How often Serve's controller collects each engine replica's vLLM statistics (load, KV cache, "
                    "prefix-cache hits) for the routers' /metrics. Each collection is one small call per replica.",
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return check_policy_name(value)

    def overloaded(self, load: int, least: int) -> bool:
        """The load guard: whether a replica with ``load`` ongoing requests is too busy to be
        preferred, beside the least-loaded candidate's ``least`` (max_load_gap and
        max_load_factor)."""
        return overloaded(load, least, self.max_load_gap, self.max_load_factor)

    def policy_kwargs(self) -> dict[str, Any]:
        """``request_router_kwargs`` of glm-serve's policy host: every field but the stats
        period, which Serve's controller takes (all JSON values)."""
        return self.model_dump(exclude={"stats_period_s"})

