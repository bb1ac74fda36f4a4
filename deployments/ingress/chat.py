"""``POST /v1/chat/completions``: OpenAI chat, with tools in the model's chat format."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from deployments.core.generation import GenerationRequest
from deployments.ingress import engine_calls
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext, json_response
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import ChatCompletionRequest
from deployments.openai_api.responses import chat_choice, chat_completion
from deployments.openai_api.schema_limits import check_schema
from deployments.openai_api.sse import StreamEncoder


class ChatCompletions:
    """Renders the conversation with the model's chat format in the engine; here the
    request is checked, and a reply's tool call is parsed out (whole or streamed)."""

    route = ("POST", "/v1/chat/completions")

    def __init__(self, ctx: IngressContext) -> None:
        self.ctx = ctx

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        ctx = self.ctx
        parsed: ChatCompletionRequest = await ctx.validate(ChatCompletionRequest,
                                                              await ctx.read_json(request), record)
        check_limits(ctx.config.limits, ctx.max_tokens_limit(record), messages=parsed.messages,
                     tools=parsed.tools, stop=parsed.stop, max_tokens=parsed.output_limit,
                     max_tokens_param="max_completion_tokens" if parsed.max_completion_tokens else "max_tokens",
                     choices=parsed.n, default_max_tokens=ctx.default_max_tokens,
                     logprobs=parsed.logprobs_count, stream=parsed.stream)
        ctx.check_sampling(parsed, record)
        ctx.check_tool_support(parsed.tools)
        tools: list[dict[str, Any]] | None = parsed.active_tools()
        schemas = ctx.config.limits.schemas
        if parsed.response_format is not None and parsed.response_format.json_schema is not None:
            check_schema(parsed.response_format.json_schema.schema_, schemas, "response_format.json_schema.schema")
        if parsed.force_tool_call:  # only a forced call's parameters become a grammar
            offered = {tool["function"]["name"] for tool in tools or ()}
            for i, tool in enumerate(parsed.tools or ()):
                if tool.function["name"] in offered:
                    check_schema(tool.function.get("parameters") or {}, schemas, f"tools.{i}.function.parameters")
        generation = ctx.with_deadlines(GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages],
            tools=tools,
            force_tool_call=parsed.force_tool_call,
            structured=parsed.response_format.structured() if parsed.response_format else None,
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs_count,
            max_tokens=parsed.output_limit,
            adapter=record.adapter,
        ), request, parsed.user)
        record.request_id = generation.request_id
        await ctx.reserve_tokens(record, generation)
        if ctx.config.log_prompts:
            record.text = {"messages": generation.messages}
        if parsed.stream:
            encoder = StreamEncoder("chat", generation.request_id, parsed.model)
            return await engine_calls.stream(ctx, record, generation, encoder, parsed.include_usage,
                                             lambda: ctx.chat_format.stream_parser(tools))
        result = await engine_calls.complete(ctx, record, generation)
        choices = []
        for index, choice in enumerate(result.choices):
            call = ctx.chat_format.parse_reply(choice.text, tools)
            choices.append(chat_choice(
                index, None if call else choice.text, "tool_calls" if call else choice.finish_reason,
                tool_calls=[call.openai()] if call else None, logprobs=choice.logprobs,
            ))
        body = chat_completion(generation.request_id, parsed.model, choices,
                                        result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        return json_response(body, record)
