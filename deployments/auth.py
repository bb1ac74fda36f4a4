"""API keys: who may use the service.

Keys never sit in a config file. ``router.api_keys_env`` names an environment variable
of the router replicas' processes that holds one or more comma-separated keys, and
``router.api_keys_file`` names a file with one key per line (``#`` starts a comment).
Both may be given; a configured source that yields no key is an error at start-up, so a
typo never leaves the service open. Every key is compared on every request with
:func:`hmac.compare_digest`, so the time taken does not tell a caller which key, or how
much of one, it guessed.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from deployments.errors import APIError


def load_api_keys(env_name: str | None, file_name: str | None) -> list[bytes]:
    """The keys from the configured sources; [] when none is configured (no auth)."""
    keys: list[str] = []
    if env_name is not None:
        found = [k.strip() for k in os.environ.get(env_name, "").split(",") if k.strip()]
        if not found:
            raise ValueError(f"router.api_keys_env: the environment variable {env_name} is unset or empty "
                             "in the router replica's process")
        keys += found
    if file_name is not None:
        try:
            lines = Path(file_name).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"router.api_keys_file: cannot read {file_name}: {exc.strerror}") from None
        found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise ValueError(f"router.api_keys_file: {file_name} holds no key")
        keys += found
    return [k.encode() for k in keys]


def check_bearer(authorization: str | None, keys: list[bytes]) -> None:
    """Raise a 401 unless ``authorization`` is ``Bearer <one of keys>``."""
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    matched = False
    for key in keys:  # no early exit: every key is compared
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        message = "Missing API key." if not presented else "Incorrect API key provided."
        raise APIError(401, message, "authentication_error", code="invalid_api_key")
