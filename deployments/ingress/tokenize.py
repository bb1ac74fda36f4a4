"""``POST /tokenize``: how many tokens a prompt or conversation takes (vLLM's extension)."""

from __future__ import annotations

import asyncio
import uuid

from starlette.requests import Request
from starlette.responses import Response

from deployments.core.generation import GenerationRequest
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext, json_response
from deployments.ingress.engine_calls import deadline_error, engine_failure
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import TokenizeRequest


class Tokenize:
    """Rendered and counted by an engine replica's tokenizer; nothing is generated."""

    route = ("POST", "/tokenize")

    def __init__(self, ctx: IngressContext) -> None:
        self.ctx = ctx

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        ctx = self.ctx
        parsed: TokenizeRequest = await ctx.validate(TokenizeRequest,
                                                        await ctx.read_json(request), record)
        check_limits(ctx.config.limits, None, messages=parsed.messages, prompt=parsed.prompt, tools=parsed.tools)
        ctx.check_tool_support(parsed.tools)
        generation = GenerationRequest(
            request_id=f"tokenize-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages] if parsed.messages else None,
            prompt=parsed.prompt,
            tools=[t.model_dump() for t in parsed.tools] if parsed.tools else None,
        )
        record.request_id = generation.request_id
        timeout_s = ctx.config.deadlines.request_timeout_s
        try:
            result = await asyncio.wait_for(ctx.engine.tokenize.remote(generation), timeout_s)
        except asyncio.TimeoutError:
            raise deadline_error("tokenizing", timeout_s) from None
        except Exception as exc:
            raise engine_failure(exc) from None
        record.prompt_tokens = result["count"]
        return json_response({"model": ctx.model_name, **result})
