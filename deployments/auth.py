"""API keys: who may use the service.

Keys never sit in a config file. ``router.api_keys_env`` names an environment variable
of the router replicas' processes that holds one or more comma-separated keys, and
``router.api_keys_file`` names a file with one key per line (``#`` starts a comment).
Both may be given; a configured source that yields no key is an error at start-up, so a
typo never leaves the service open. Every key is compared on every request with
:func:`hmac.compare_digest`, so the time taken does not tell a caller which key, or how
much of one, it guessed.

The file is read again when it changes (looked at no more than every
:data:`RELOAD_CHECK_S`), so a key removed from it is refused within seconds, with no
restart. A file that becomes unreadable or empty fails closed: none of its keys is
accepted until it holds keys again (the environment's still are), and the router logs it.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from deployments.errors import APIError

logger = logging.getLogger("glm_serve.router")


RELOAD_CHECK_S = 1.0
"""Least time between two looks at whether ``router.api_keys_file`` changed."""


def _env_keys(env_name: str) -> list[bytes]:
    found = [k.strip() for k in os.environ.get(env_name, "").split(",") if k.strip()]
    if not found:
        raise ValueError(f"router.api_keys_env: the environment variable {env_name} is unset or empty "
                         "in the router replica's process")
    return [k.encode() for k in found]


def _file_keys(file_name: str) -> list[bytes]:
    try:
        lines = Path(file_name).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"router.api_keys_file: cannot read {file_name}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise ValueError(f"router.api_keys_file: {file_name} holds no key")
    return [k.encode() for k in found]


def _file_stamp(file_name: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(file_name)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class ApiKeys:
    """The keys a router replica accepts, the file's kept current. Start-up fails (with the
    field's name) when a configured source yields no key."""

    def __init__(self, env_name: str | None, file_name: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._env = _env_keys(env_name) if env_name is not None else []
        self._file_name = file_name
        self._file: list[bytes] = []
        self._stamp: tuple[int, int, int] | None = None
        self._clock = clock
        self._looked_at = clock()
        if file_name is not None:
            self._stamp = _file_stamp(file_name)
            self._file = _file_keys(file_name)
        self.enabled = env_name is not None or file_name is not None
        """Whether any key is required at all."""

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless ``authorization`` is ``Bearer <an accepted key>``."""
        self._reload_if_changed()
        check_bearer(authorization, self._env + self._file)

    def _reload_if_changed(self) -> None:
        if self._file_name is None:
            return
        now = self._clock()
        if now - self._looked_at < RELOAD_CHECK_S:
            return
        self._looked_at = now
        stamp = _file_stamp(self._file_name)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._file = _file_keys(self._file_name)
        except ValueError as exc:
            self._file = []  # fail closed: a broken file accepts nobody
            logger.error("%s; none of its keys is accepted until it holds keys again", exc)
        else:
            logger.info("router.api_keys_file: %s changed; %d keys now", self._file_name, len(self._file))


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
