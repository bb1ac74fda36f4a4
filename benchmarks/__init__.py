"""The benchmarks: each module here is the entry point of one make target, and what they
share is in :mod:`benchmarks.harness`. No entry point imports another.

===================  ========================  =======================================================
``bench``            ``make bench``            glm-serve against the raw engine and vLLM's own server
``bench_routing``    ``make bench-routing``    prefix against pow2 routing on multi-turn chat
``bench_tenants``    ``make bench-tenants``    a quiet tenant beside a rate-limited one, then a flood
``bench_lora``       ``make bench-lora``       adapter-aware routing, and what an adapter costs
``bench_transport``  ``make bench-transport``  one streamed chunk's cost from engine to router
``bench_scale``      ``make bench-scale``      prefix against pow2 at 16-256 simulated engine replicas
``bench_ceiling``    ``make bench-ceiling``    the serving layer's own limits
``calibrate``        ``make calibrate``        the real engine measured, fitted to a simulated profile
===================  ========================  =======================================================
"""
