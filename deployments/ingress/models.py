"""``GET /v1/models``: the model this service serves and its LoRA adapters, with the context length."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from deployments.core.errors import APIError
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext, json_response
from deployments.ingress.engine_calls import engine_failure
from deployments.openai_api.responses import model_list


class Models:
    """The context length comes from an engine replica once, then from memory."""

    route = ("GET", "/v1/models")

    def __init__(self, ctx: IngressContext) -> None:
        self.ctx = ctx
        self._max_model_len: int | None = None

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        ctx = self.ctx
        if self._max_model_len is None:
            try:
                info = await asyncio.wait_for(ctx.engine.model_info.remote(), ctx.config.deadlines.health_timeout_s)
            except asyncio.TimeoutError:
                raise APIError(503, "No engine replica answered in time.", "service_unavailable") from None
            except Exception as exc:
                raise engine_failure(exc) from None
            self._max_model_len = info["max_model_len"]
        body = model_list(ctx.model_name, self._max_model_len, ctx.created, await ctx.adapters.list_names())
        if record.caller is not None:  # only what the caller's tenant may call
            body["data"] = [m for m in body["data"] if record.caller.may_call(m["id"])]
        return json_response(body)
