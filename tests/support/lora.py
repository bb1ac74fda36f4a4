"""LoRA adapter folders as the catalog and the engine replicas find them (no real weights)."""

from __future__ import annotations


def write_adapter(path, weights: bytes = b"w") -> None:
    """An adapter folder at ``path``: a config and ``weights`` as its safetensors file."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)
