"""The embedded-model command's idempotency check (scripts/prepare_embedded_model.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("prepare", ROOT / "scripts" / "prepare_embedded_model.py")
prepare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare)


def _complete_folder(path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (path / name).write_text("{}")
    (path / prepare.STAMP).write_text(json.dumps(prepare._stamp_payload()))


def test_complete_folder_is_skipped(tmp_path):
    _complete_folder(tmp_path)
    assert prepare.is_complete(tmp_path)
    assert prepare.main(["--out", str(tmp_path)]) == 0  # returns at once: nothing downloaded


def test_missing_file_or_other_version_is_incomplete(tmp_path):
    _complete_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert not prepare.is_complete(tmp_path)
    _complete_folder(tmp_path)
    (tmp_path / prepare.STAMP).write_text(json.dumps({**prepare._stamp_payload(), "version": "0.0.1"}))
    assert not prepare.is_complete(tmp_path)
    (tmp_path / prepare.STAMP).write_text("not json")
    assert not prepare.is_complete(tmp_path)
