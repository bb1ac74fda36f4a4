"""``POST /v1/completions``: OpenAI text completion of a string or token-id prompt."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response

from deployments.core.generation import GenerationRequest
from deployments.ingress import engine_calls
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext, json_response
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import CompletionRequest
from deployments.openai_api.responses import text_completion
from deployments.openai_api.sse import StreamEncoder


class Completions:
    """A prompt continued as it is, with no chat format."""

    route = ("POST", "/v1/completions")

    def __init__(self, ctx: IngressContext) -> None:
        self.ctx = ctx

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        ctx = self.ctx
        parsed: CompletionRequest = await ctx.validate(CompletionRequest,
                                                          await ctx.read_json(request), record)
        check_limits(ctx.config.limits, ctx.max_tokens_limit(record), prompt=parsed.prompt, stop=parsed.stop,
                     max_tokens=parsed.max_tokens, choices=parsed.n, default_max_tokens=ctx.default_max_tokens,
                     logprobs=parsed.logprobs, logprobs_param="logprobs", stream=parsed.stream)
        ctx.check_sampling(parsed, record)
        generation = ctx.with_deadlines(GenerationRequest(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            prompt=parsed.prompt,  # type: ignore[arg-type]  (a one-string list was unwrapped)
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs,
            max_tokens=parsed.max_tokens,
            adapter=record.adapter,
        ), request, parsed.user)
        record.request_id = generation.request_id
        await ctx.reserve_tokens(record, generation)
        if ctx.config.log_prompts:
            record.text = {"prompt": generation.prompt}
        if parsed.stream:
            encoder = StreamEncoder("text", generation.request_id, parsed.model)
            return await engine_calls.stream(ctx, record, generation, encoder, parsed.include_usage)
        result = await engine_calls.complete(ctx, record, generation)
        body = text_completion(generation.request_id, parsed.model, result.choices,
                                        result.prompt_tokens, result.cached_tokens)
        return json_response(body, record)
