"""A small engine profile for the simulated engine's tests (deployments/engine/simulated/)."""

from __future__ import annotations

from deployments.config.engine_profile import EngineProfile

BS = 4
"""Tokens per KV block: small, so that a test's prompts span several."""


def sim_profile(**changes) -> EngineProfile:
    """A profile with round numbers (10 ms a step, 1 ms a prompt token, ...), ``changes`` applied."""
    values = dict(name="test", source="assumed", block_size=BS, kv_cache_blocks=64, max_num_seqs=8,
                  max_num_batched_tokens=64, max_model_len=1024, step_ms=10.0, prefill_ms_per_token=1.0,
                  decode_ms_per_seq=2.0, decode_ms_per_1k_context=1000.0)
    values.update(changes)
    return EngineProfile(**values)
