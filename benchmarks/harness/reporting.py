"""What every benchmark writes at the end: its JSON (meta, results, targets) and the
targets' verdicts on stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Check = tuple[str, bool, str]
"""A target: its name, whether it was met, and the measured value in words."""


def write_results(path: Path, meta: dict[str, Any], results: dict[str, Any], checks: Sequence[Check],
                  **extra: Any) -> None:
    """``path`` as JSON: ``meta``, ``results``, any ``extra`` sections, then the targets."""
    body = {"meta": meta, "results": results, **extra,
            "targets": [{"name": n, "met": ok, "value": v} for n, ok, v in checks]}
    path.write_text(json.dumps(body, indent=2))


def print_targets(checks: Sequence[Check]) -> None:
    """One line per target: PASS or MISS, its name and the measured value."""
    for name, ok, value in checks:
        print(f"target {'PASS' if ok else 'MISS'}: {name}: {value}")
