"""glm-serve's HTTP ingress (the router deployment), one module per job.

=================  ==============================================================
``deployment``     the Serve deployment: dispatch, API keys, admission, errors
``admission``      the cap on generation in flight; one access-log line per request
``context``        what handlers share: body, validation, deadlines, responses
``engine_calls``   the engine hop: whole or streamed, one retry policy, the relay
``chat``           ``POST /v1/chat/completions``
``completions``    ``POST /v1/completions``
``tokenize``       ``POST /tokenize``
``models``         ``GET /v1/models``
``health``         ``GET /health``
``introspection``  ``GET /metrics`` and ``GET /openapi.json``
``gate_watch``     whether requests came through the proxy gate
=================  ==============================================================

An endpoint is a class with a ``route`` (method, path) and an async ``__call__(request,
record)``, built with the :class:`~deployments.ingress.context.IngressContext`.
"""
