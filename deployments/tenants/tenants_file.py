"""The tenants file: which internal apps may call the service, with which keys and limits.

``router.auth.tenants_file`` names a YAML file::

    tenants:
      - name: search-app
        keys: [<sha256 hex of a key>, ...]   # `glm-serve hash-key` prints one
        priority: interactive                # or batch
        max_concurrent_requests: 32
        requests_per_minute: 600
        tokens_per_minute: 200000            # prompt plus completion
        max_tokens_limit: 1024
        allow_ignore_eos: false
        models: [smollm2-135m-instruct]      # default: every model

A key itself is never stored, only its SHA-256 digest: the file can be read by whoever
deploys the service without handing them a key. Unknown fields are errors, naming the
tenant and the field.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_TENANT = "default"
"""The tenant of the keys from ``router.auth.api_keys_env`` / ``router.auth.api_keys_file``, and of
every request when no key is required."""

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, as the tenants file holds it."""
    return hashlib.sha256(key.encode()).hexdigest()


class Tenant(BaseModel):
    """One internal app: its keys, its limits and its place in the queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Names the tenant in metrics and the access log (never a key).")
    keys: list[str] = Field(
        min_length=1, description="SHA-256 hex digests of the tenant's API keys (`glm-serve hash-key`).")
    priority: Literal["interactive", "batch"] = Field(
        default="interactive",
        description="batch requests yield to interactive ones: in the engines' schedulers, and in the router's "
                    "admission when it is nearly full.")
    max_concurrent_requests: int | None = Field(
        default=None, ge=1, description="Generation requests in flight at once, streams until they end.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Generation requests per minute.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Prompt plus completion tokens per minute.")
    max_tokens_limit: int | None = Field(
        default=None, ge=1, description="Largest max_tokens one request may ask for; None: the router's.")
    allow_ignore_eos: bool | None = Field(
        default=None, description="Whether the tenant's requests may set ignore_eos; None: the router's setting.")
    models: list[str] | None = Field(
        default=None, description="The models (and adapters) the tenant may call; None: all.")
    adapter_loads_per_minute: int | None = Field(
        default=None, ge=1,
        description="LoRA adapter loads the tenant's requests may cause per minute on one engine replica (a load "
                    "stalls the replica and may evict other tenants' adapters); past it, 429. None: no limit.")
    role: Literal["tenant", "operator"] = Field(
        default="tenant",
        description="operator: the tenant's keys may also read GET /metrics (every tenant's and adapter's name and "
                    "usage) and the whole of GET /health. The keys of api_keys_env and api_keys_file are operators.")
    cache_group: str | None = Field(
        default=None,
        description="Tenants with the same cache_group share vLLM's prefix cache (a team's apps with one system "
                    "prompt). None: the tenant's cache is its own, so no other tenant can learn from cached_tokens "
                    "or time to first token what it sent.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("a tenant name is 1-63 letters, digits, '_', '.' or '-', starting with a letter "
                             "or digit (it becomes a metrics label)")
        return name

    @field_validator("cache_group")
    @classmethod
    def _plain_group(cls, group: str | None) -> str | None:
        if group is not None and not _NAME.match(group):
            raise ValueError("a cache_group is 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return group

    @property
    def is_operator(self) -> bool:
        """Whether the tenant's keys may read the operator views (``/metrics``, ``/health`` whole)."""
        return self.role == "operator"

    @property
    def cache_salt(self) -> str | None:
        """vLLM's ``cache_salt`` for this tenant's prompts: its cache group's, or its own. The
        default tenant (the plain keys' callers, or everyone on a service without keys)
        keeps the unsalted cache, shared as before."""
        if self.name == DEFAULT_TENANT:
            return None
        return f"group:{self.cache_group}" if self.cache_group else f"tenant:{self.name}"

    @field_validator("keys")
    @classmethod
    def _digests_only(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            if not _DIGEST.match(key):
                raise ValueError(f"keys[{i}] is not a SHA-256 hex digest (64 lowercase hex characters); the "
                                 "file holds digests, never keys: `glm-serve hash-key` prints one")
        return keys

    @property
    def limited(self) -> bool:
        """Whether any of the tenant's rate or concurrency limits is set."""
        return any(v is not None for v in (self.max_concurrent_requests, self.requests_per_minute,
                                           self.tokens_per_minute))

    @property
    def batch(self) -> bool:
        return self.priority == "batch"

    def may_call(self, model: str) -> bool:
        """Whether the tenant may call ``model``."""
        return self.models is None or model in self.models


class TenantsFile(BaseModel):
    """The whole file: ``tenants:``, a list of :class:`Tenant`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: list[Tenant] = Field(description="The tenants, each with its own keys.")

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        names: set[str] = set()
        owners: dict[str, str] = {}
        for tenant in self.tenants:
            if tenant.name in names:
                raise ValueError(f"tenant {tenant.name!r} appears twice")
            names.add(tenant.name)
            for key in tenant.keys:
                if key in owners:
                    raise ValueError(f"one key digest belongs to both {owners[key]!r} and {tenant.name!r}")
                owners[key] = tenant.name
        return self


def _location(loc: tuple, data: object) -> str:
    """A pydantic error location as the file's reader sees it: ``tenants[1] (noisy).priority``."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], dict) else None
            parts[-1] += f"[{part}]" + (f" ({name})" if name and i == 1 else "")
        else:
            parts.append(str(part))
        try:
            node = node[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def parse_tenants(text: str, source: str) -> TenantsFile:
    """The tenants file's text as :class:`TenantsFile`; ValueError naming ``source`` and
    each bad field otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML: {exc}") from None
    if not isinstance(data, dict) or "tenants" not in data:
        raise ValueError(f"{source}: expected a mapping with a top-level `tenants:` list")
    try:
        return TenantsFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_location(e['loc'], data) or 'tenants'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("\n".join(lines)) from None


def load_tenants(path: str) -> TenantsFile:
    """Read and validate the tenants file at ``path`` (ValueError naming what is wrong)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"router.auth.tenants_file: cannot read {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_tenants(text, path)
