"""The router deployment: glm-serve's HTTP ingress, one Serve replica of it.

It dispatches each request to its endpoint's handler (one module per endpoint in this
package), after the API key check and, for generation, admission. Handlers parse and
validate OpenAI requests, hand each to an engine replica through a ``DeploymentHandle``
(Serve's request router picks the replica: :mod:`deployments.routing`), and relay the
engine's chunks, which arrive on this replica's stream channel
(:mod:`deployments.stream_channel`), as server-sent events the moment they arrive.

Request life cycle::

    API key -> tenant (401) -> route (404/405) -> admission (503) -> tenant's requests and
      concurrency (429) -> read body (413) -> parse JSON (400) -> validate (400)
      -> model name, and may the tenant call it (404) -> limits (400/413)
      -> tenant's tokens, reserved (429)
      -> engine.generate (chunks over the stream channel) / engine.complete
         (Serve tries another replica only while none has accepted the request; after
         that an engine failure is the client's 503 with Retry-After)
      -> an APIError (the router's or an engine's refusal, a deadline) -> its status, here
      -> first chunk -> 200 + SSE stream
      -> a failure or a deadline after the first byte -> SSE error event, then [DONE]
      -> one access-log line and the metrics, once, when the request ends; the tenant's
         place freed and its tokens settled (:meth:`IngressDeployment.__call__`, or the
         stream's relay once the request became a stream)

Admission: glm-serve's gate in Serve's proxy refuses past ``router.max_in_flight_requests``
x the router replicas (:mod:`deployments.proxy_gate`), this class past the cap on its own
(:class:`~deployments.ingress.admission.Admission`), Serve's proxy past the router
deployment's own bounds, and the engine deployment's ``max_ongoing_requests`` bounds what
runs; each answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from chat_formats import get_chat_format
from deployments.config import IngressConfig, ModelConfig
from deployments.core.errors import APIError
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.admission import Admission
from deployments.ingress.chat import ChatCompletions
from deployments.ingress.completions import Completions
from deployments.ingress.context import IngressContext, error_response
from deployments.ingress.gate_watch import ProxyGateWatch
from deployments.ingress.health import Health
from deployments.ingress.introspection import Metrics, OpenAPI
from deployments.ingress.metrics import IngressMetrics
from deployments.ingress.models import Models
from deployments.ingress.tokenize import Tokenize
from deployments.lora.catalog import AdapterCatalog
from deployments.openai_api.routes import ADMITTED_ROUTES, GATE_HEADER, ambiguity, route_path
from deployments.stream_channel import StreamReceiver
from deployments.tenants.api_keys import ApiKeys
from deployments.tenants.quota_service import TenantQuotas, quota_actor_name
from deployments.tenants.rate_headers import RateLimited
from deployments.tenants.tenants_file import Tenant

logger = logging.getLogger("glm_serve.router")

OPERATOR_PATHS = frozenset({"/metrics"})
"""Views of every tenant's and adapter's names and usage: operators' keys only
(``role: operator``, or the plain keys), unless ``router.auth.metrics_without_key``."""


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


@serve.deployment
class IngressDeployment:
    """OpenAI-compatible HTTP API in front of the engine deployment."""

    def __init__(self, engine: DeploymentHandle, model: ModelConfig, config: IngressConfig,
                 warm_engine: bool = True):
        metrics = IngressMetrics(export=config.export_ray_metrics)
        self._ctx = ctx = IngressContext(
            engine=engine,
            # Chunks come back over a direct connection from the engine replicas; Serve
            # carries the request (deployments/stream_channel/ says why).
            receiver=StreamReceiver(config.stream_host or _node_ip()),
            model_name=model.name,
            adapters=AdapterCatalog(model.lora),
            chat_format=get_chat_format(model.chat_format),
            config=config,
            metrics=metrics,
            admission=Admission(config.max_in_flight_requests, metrics,
                                TenantQuotas(quota_actor_name(engine.app_name), _router_replicas(config),
                                             on_fallback=metrics.tenant_quota_fallbacks.inc),
                                config.batch_admission_share),
            default_max_tokens=model.default_max_tokens,
        )
        self._api_keys = ApiKeys(config.auth.api_keys_env, config.auth.api_keys_file, config.auth.tenants_file,
                                 on_stale=lambda stale: metrics.tenants_file_stale.set(int(stale)))
        if any(t.limited for t in self._api_keys.tenants.values()):
            ctx.admission.quotas.start()  # type: ignore[union-attr]
        self._open_paths = {"/health"} | ({"/metrics"} if config.auth.metrics_without_key else set())
        self._gate = ProxyGateWatch(metrics)
        handlers = (ChatCompletions(ctx), Completions(ctx), Models(ctx), Tokenize(ctx), Health(ctx, self._gate, lambda: self._api_keys.stale),
                    Metrics(ctx), OpenAPI(ctx))
        self._routes = {handler.route: handler for handler in handlers}
        self._paths = {path for _, path in self._routes}
        # One cheap call now, so that the handle learns the engine replicas before traffic
        # does: requests that arrive while it knows none wait in its queue. It waits there
        # until an engine replica is up; its answer is not needed. Not when the engines may
        # scale to zero: the call would wake them.
        self._warmup = engine.model_info.remote() if warm_engine else None

    async def __call__(self, request: Request) -> Response:
        """Answer one HTTP request. Its record ends here (counted, logged, its admission and
        tenant units settled) unless it became a stream, whose relay then owns its end
        (:func:`deployments.ingress.engine_calls.stream`): one owner at any time, never two."""
        ctx = self._ctx
        path = route_path(request.scope)
        handler = self._routes.get((request.method, path))
        # Unknown paths share one label: a scanner must not mint a metrics series per URL.
        record = RequestRecord(route=path if handler else "unmatched", method=request.method)
        response: Response | None = None
        try:
            response = await self._answer(request, record, path, handler)
            if isinstance(response, StreamingResponse):
                return _with_rate_headers(response, record)  # its relay ends the record
            record.status = response.status_code
        except APIError as exc:
            record.status, record.error_code = exc.status, exc.code or exc.type
            if isinstance(exc, RateLimited):
                record.error_code = f"rate_limit:{exc.kind}"
            response = error_response(exc)
        except ClientDisconnect:
            record.status = 499
            response = Response(status_code=499)
        except asyncio.CancelledError:  # the client left while we waited: release its admission
            record.status = 499
            raise
        except Exception as exc:  # never let one request take the replica's loop down
            logger.exception("unhandled error on %s", path)
            error = APIError(500, f"Internal error: {type(exc).__name__}", "server_error")
            record.status, record.error_code = error.status, error.code or error.type
            response = error_response(error)
        finally:
            if not isinstance(response, StreamingResponse):
                ctx.admission.finish(record)
        return _with_rate_headers(response, record)

    async def _answer(self, request: Request, record: RequestRecord, path: str, handler: Any) -> Response:
        """Authenticate, admit and hand the request to its endpoint; raises APIError."""
        ctx = self._ctx
        why = ambiguity(request.scope)
        if why is not None:
            raise APIError(400, f"Refused: {why}.")
        if not self._api_keys.enabled:
            tenant: Tenant | None = self._api_keys.anonymous
        elif path in self._open_paths:
            # A probe or a scrape: nobody's, unless a valid key says whose (an operator's
            # /health shows more than a load balancer's).
            tenant = self._api_keys.identify_optional(request.headers.get("authorization"))
        else:
            tenant = self._api_keys.identify(request.headers.get("authorization"))
        record.caller = tenant
        if path in OPERATOR_PATHS and path not in self._open_paths and not tenant.is_operator:  # type: ignore[union-attr]
            raise APIError(403, f"This key may not read {path}: it needs role: operator in the tenants file.",
                           "permission_error", code="operator_only")
        if handler is None:
            if path in self._paths:
                raise APIError(405, f"Method {request.method} is not allowed on {path}.")
            raise APIError(404, f"No route {path}.", "not_found_error")
        if path in ADMITTED_ROUTES:
            self._gate.saw(request.headers.get(GATE_HEADER))
            # The tenant's own limits first: a tenant past them is refused before it takes
            # one of the places every tenant shares (and that refusal is cached).
            record.ticket = await ctx.admission.quotas.admit(tenant)  # type: ignore[union-attr,arg-type]
            ctx.admission.admit(record)
        return await handler(request, record)


def _with_rate_headers(response: Response, record: RequestRecord) -> Response:
    """``response`` with the tenant's x-ratelimit-* headers, when it has limits."""
    if record.ticket is not None and record.ticket.headers:
        for name, value in record.ticket.headers.items():
            response.headers.setdefault(name, value)
    return response


def _router_replicas(config: IngressConfig) -> int:
    """The router replicas a tenant's limit is split over when the quota actor is out of
    reach: the configured count, or autoscaling's most (the strict side)."""
    options = config.deployment
    if isinstance(options.num_replicas, int):
        return options.num_replicas
    return int((options.autoscaling_config or {}).get("max_replicas", 1))
