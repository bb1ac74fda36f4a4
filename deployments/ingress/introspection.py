"""``GET /metrics`` (Prometheus) and ``GET /openapi.json`` (the API's schema)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext
from deployments.openai_api.responses import openapi_document


class Metrics:
    """This router replica's counters, and every engine replica's vLLM statistics."""

    route = ("GET", "/metrics")

    def __init__(self, ctx: IngressContext) -> None:
        self.ctx = ctx

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        return Response(self.ctx.metrics.render(), media_type=self.ctx.metrics.content_type)


class OpenAPI:
    """The schema of every route, built once."""

    route = ("GET", "/openapi.json")

    def __init__(self, ctx: IngressContext) -> None:
        self._body = openapi_document(ctx.model_name)

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        return JSONResponse(self._body)
