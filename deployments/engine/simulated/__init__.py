"""The simulated engine (``model.simulated``): vLLM's batching, prefix cache and eviction
without a model, taking the time an engine profile says (docs/scaling.md).

===============  ==============================================================
``block_cache``  vLLM's block pool: chained block hashes, reference counts, LRU
``scheduler``    one engine step as a clock-free function
``engine``       ``AsyncLLM``'s face over the scheduler
===============  ==============================================================

The profile and its config are in :mod:`deployments.config.engine_profile`.
"""
