"""What every layer above may use: nothing here imports the rest of glm-serve.

===================  ==============================================================
``errors``           the OpenAI error shape (``APIError``) and its common cases
``generation``       the contract between ingress and engine: requests, chunks, results
``engine_snapshot``  what an engine replica reports of itself (routing, ``/metrics``)
``named_actor``      a Ray actor found by name, created once
``serve_private``    every name glm-serve takes from Serve's private surface
``private_surface``  checking such names: resolved, or reported missing with why
===================  ==============================================================
"""
