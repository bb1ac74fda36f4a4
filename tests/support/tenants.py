"""Tenants files as text, for the tests of keys, tenants and `glm-serve check`."""

from __future__ import annotations

from deployments.tenants.tenants_file import hash_key


def tenants_yaml(*tenants: str) -> str:
    """A tenants file holding ``tenants`` (each from :func:`tenant_entry`)."""
    return "tenants:\n" + "".join(tenants)


def tenant_entry(name: str, key: str, extra: str = "") -> str:
    """One tenant of a tenants file: its name, the digest of ``key``, and ``extra`` YAML lines."""
    return f"  - name: {name}\n    keys: [{hash_key(key)}]\n{extra}"
