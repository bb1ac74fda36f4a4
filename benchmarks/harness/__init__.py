"""What the benchmarks share: one package, one job per module. Nothing here is run by a
make target; the entry points are the modules one level up (:mod:`benchmarks`).

=================  ==================================================================
``servers``        start, pause (SIGSTOP) and stop the systems compared, each in a session
``raw_engine``     vLLM's ``AsyncLLM`` in a child process, one level per command
``workload``       the seeded single-turn prompts, a level's run and its statistics
``http_load``      the aiohttp load generator: SSE events, a level, one multi-turn turn
``chat_sessions``  the seeded multi-turn workloads and their statistics
``scale_sim``      the discrete-event simulator at 64-256 engine replicas
``lora_adapters``  PEFT LoRA adapters made on the spot (for the tests too)
``cpu_usage``      CPU seconds by process, the model's apart from the serving layer's
``stats``          the one percentile every benchmark reports
``reporting``      the results JSON and the targets' verdicts
``plots``          the bar charts
=================  ==================================================================

``raw_engine`` runs as ``python -m benchmarks.harness.raw_engine`` (:mod:`benchmarks.harness.servers`
starts it), and ``scale_sim`` alone as ``python -m benchmarks.harness.scale_sim``.
"""
