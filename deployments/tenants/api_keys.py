"""API keys: who is calling, as a tenant.

Keys come from three sources, none of them the config file:

- ``router.auth.tenants_file``: tenants, each with the SHA-256 digests of its keys and its own
  limits (:mod:`deployments.tenants.tenants_file`);
- ``router.auth.api_keys_env``: an environment variable of the router replicas' processes with
  comma-separated keys, and ``router.auth.api_keys_file``: a file with one key per line (``#``
  starts a comment). Their keys belong to the ``default`` tenant, which has no limits.

A configured source that yields no key is an error at start-up, so a typo never leaves
the service open. A presented key is hashed and looked up by digest: the lookup learns
nothing about a key that is not held, and no key is kept in memory in the clear.

Both files are read again when they change (looked at no more than every
:data:`RELOAD_CHECK_S`), so a key removed from either is refused within seconds, with no
restart. A keys file that becomes unreadable or empty fails closed: none of its keys is
accepted until it holds keys again. A tenants file that stops validating (a half-saved
edit) is logged and the last valid version stays in force; ``glm-serve check`` validates
an edit before it is saved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from deployments.core.errors import APIError
from deployments.tenants.tenants_file import DEFAULT_TENANT, Tenant, hash_key, load_tenants

logger = logging.getLogger("glm_serve.router")


RELOAD_CHECK_S = 1.0
"""Least time between two looks at whether a keys or tenants file changed."""


def _env_keys(env_name: str) -> list[str]:
    found = [k.strip() for k in os.environ.get(env_name, "").split(",") if k.strip()]
    if not found:
        raise ValueError(f"router.auth.api_keys_env: the environment variable {env_name} is unset or empty "
                         "in the router replica's process")
    return [hash_key(k) for k in found]


def _file_keys(file_name: str) -> list[str]:
    try:
        lines = Path(file_name).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"router.auth.api_keys_file: cannot read {file_name}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise ValueError(f"router.auth.api_keys_file: {file_name} holds no key")
    return [hash_key(k) for k in found]


def _file_stamp(file_name: str) -> str | None:
    """The file's content digest (None: unreadable). A digest, not the modification time:
    an edit of the same size within one timestamp tick would keep the time and size."""
    try:
        return hashlib.sha256(Path(file_name).read_bytes()).hexdigest()
    except OSError:
        return None


def default_tenant(digests: list[str] | None = None) -> Tenant:
    """The tenant of the plain keys sources (and of every request when no key is needed):
    no limits, the router's own settings."""
    return Tenant.model_construct(name=DEFAULT_TENANT, keys=digests or [], priority="interactive",
                                  max_concurrent_requests=None, requests_per_minute=None, tokens_per_minute=None,
                                  max_tokens_limit=None, allow_ignore_eos=None, models=None, role="operator",
                                  cache_group=None, adapter_loads_per_minute=None)


class _Watched:
    """A file read again when its stamp changes (looked at every RELOAD_CHECK_S at most)."""

    def __init__(self, name: str, read: Callable[[str], object], clock: Callable[[], float]) -> None:
        self.name, self._read, self._clock = name, read, clock
        self._stamp = _file_stamp(name)
        self.value = read(name)  # start-up: a bad file is an error
        self._looked_at = clock()

    def changed(self) -> bool:
        """Read the file again if it changed; True when :attr:`value` may differ. A failed
        read raises ValueError (once per change)."""
        now = self._clock()
        if now - self._looked_at < RELOAD_CHECK_S:
            return False
        self._looked_at = now
        stamp = _file_stamp(self.name)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.value = self._read(self.name)
        return True


class ApiKeys:
    """The keys a router replica accepts, each mapped to its tenant; files kept current.
    Start-up fails (naming the field) when a configured source yields no key or the
    tenants file does not validate."""

    def __init__(self, env_name: str | None, file_name: str | None, tenants_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_stale: Callable[[bool], None] | None = None) -> None:
        self._env = _env_keys(env_name) if env_name is not None else []
        self._keys_file = _Watched(file_name, _file_keys, clock) if file_name is not None else None
        self._tenants_file = _Watched(tenants_file, load_tenants, clock) if tenants_file is not None else None
        self.enabled = env_name is not None or file_name is not None or tenants_file is not None
        """Whether any key is required at all."""
        self.anonymous = default_tenant()
        """The tenant of requests on a service that needs no key, and of open routes."""
        self.tenants: dict[str, Tenant] = {}
        """The tenants by name, the default one included while it has keys."""
        self._by_digest: dict[str, Tenant] = {}
        self.stale: str | None = None
        """Why the tenants file in force is not the one on disk (it stopped validating, or
        cannot be read), or None when it is. Shown to operators in ``/health``."""
        self._on_stale = on_stale
        self._rebuild()

    def identify(self, authorization: str | None) -> Tenant:
        """The tenant whose key ``authorization`` (``Bearer <key>``) presents; a 401 if none."""
        if not self.enabled:
            return self.anonymous
        self._reload_if_changed()
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
        tenant = self._by_digest.get(hash_key(presented)) if presented else None
        if tenant is None:
            message = "Missing API key." if not presented else "Incorrect API key provided."
            raise APIError(401, message, "authentication_error", code="invalid_api_key")
        return tenant

    def identify_optional(self, authorization: str | None) -> Tenant | None:
        """The tenant whose key ``authorization`` presents, or None for no key or a wrong one
        (an open route: the caller is answered either way, with less)."""
        try:
            return self.identify(authorization) if authorization else None
        except APIError:
            return None

    def _reload_if_changed(self) -> None:
        changed = False
        if self._keys_file is not None:
            try:
                changed |= self._keys_file.changed()
            except ValueError as exc:
                self._keys_file.value = []  # fail closed: a broken keys file accepts nobody
                changed = True
                logger.error("%s; none of its keys is accepted until it holds keys again", exc)
        if self._tenants_file is not None:
            try:
                changed |= self._tenants_file.changed()
            except ValueError as exc:  # a half-saved edit: keep the last valid tenants
                logger.error("router.auth.tenants_file did not validate, the last valid version stays in force: %s", exc)
                self._set_stale(str(exc).splitlines()[0])
            else:
                if changed:
                    self._set_stale(None)
        if changed:
            try:
                self._rebuild()
            except ValueError as exc:
                logger.error("%s; the last valid keys stay in force", exc)

    def _set_stale(self, why: str | None) -> None:
        # Fail static, not closed: a broken edit keeps the last good tenants serving
        # (docs/operations.md says why), and operators see it here and in /metrics.
        self.stale = why
        if self._on_stale is not None:
            self._on_stale(why is not None)

    def _rebuild(self) -> None:
        plain = self._env + (self._keys_file.value if self._keys_file is not None else [])  # type: ignore[operator]
        tenants = list(self._tenants_file.value.tenants) if self._tenants_file is not None else []  # type: ignore[union-attr]
        if plain:
            if any(t.name == DEFAULT_TENANT for t in tenants):
                raise ValueError(f"router.auth.tenants_file: the name {DEFAULT_TENANT!r} is taken by the keys of "
                                 "router.auth.api_keys_env / api_keys_file")
            tenants.append(default_tenant(plain))
        by_digest = {digest: tenant for tenant in tenants for digest in tenant.keys}
        self.tenants = {t.name: t for t in tenants}
        self._by_digest = by_digest
        if self._tenants_file is not None or self._keys_file is not None:
            logger.info("API keys: %d tenants, %d keys", len(tenants), len(by_digest))
