"""OpenAI wire format, whole (non-streamed) responses, built as dicts.

They are written once per request; streamed chunks (:mod:`deployments.openai_api.sse`)
never go through pydantic at all.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from deployments.core.generation import Choice, TokenLogprob
from deployments.openai_api.requests import ChatCompletionRequest, CompletionRequest, TokenizeRequest


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's ``usage`` object; ``prompt_tokens_details.cached_tokens`` counts the prompt
    tokens that vLLM's prefix cache supplied (no prefill was spent on them)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
         "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in t.top]}
        for t in tokens
    ]}


def completion_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """A completion choice's ``logprobs`` object; ``offset`` is where this text starts
    in the choice's whole text (``text_offset`` counts from there)."""
    text_offset = []
    for t in tokens:
        text_offset.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": text_offset,
    }


def chat_completion(request_id: str, model: str, choices: list[dict[str, Any]],
                    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """A whole ``chat.completion`` object; ``choices`` from :func:`chat_choice`."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def chat_choice(index: int, text: str | None, finish_reason: str | None,
                tool_calls: list[dict[str, Any]] | None = None,
                logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
    """One choice of a whole chat completion (with ``tool_calls`` when the model called a tool)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message,
            "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
            "finish_reason": finish_reason}


def text_completion(request_id: str, model: str, choices: list[Choice], prompt_tokens: int,
                    cached_tokens: int = 0) -> dict[str, Any]:
    """A whole ``text_completion`` object."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": c.text,
             "logprobs": completion_logprobs(c.logprobs) if c.logprobs is not None else None,
             "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices), cached_tokens),
    }


def model_list(model_id: str, max_model_len: int, created: int, adapters: list[str] = ()) -> dict[str, Any]:
    """``GET /v1/models``: the base model, then each LoRA adapter with the base as its ``parent``
    (vLLM's own server lists adapters the same way)."""
    models = [{"id": model_id, "object": "model", "created": created, "owned_by": "glm-serve",
               "max_model_len": max_model_len, "parent": None}]
    models += [{"id": name, "object": "model", "created": created, "owned_by": "glm-serve",
                "max_model_len": max_model_len, "parent": model_id} for name in adapters]
    return {"object": "list", "data": models}


def openapi_document(model: str) -> dict[str, Any]:
    """``GET /openapi.json``: the request bodies, generated from the models above, so the
    document cannot drift from what the router accepts."""
    schemas: dict[str, Any] = {}

    def body(model_cls: type[BaseModel]) -> dict[str, Any]:
        schema = model_cls.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model_cls.__name__] = schema
        return {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model_cls.__name__}"}}}}

    error = {"description": "An error in OpenAI's shape: {\"error\": {message, type, param, code}}"}
    answer = {"200": {"description": "A JSON object, or server-sent events when stream is true"},
              "400": error, "401": error, "404": error, "413": error, "503": error, "504": error}
    return {
        "openapi": "3.1.0",
        "info": {"title": "glm-serve", "version": "1", "description": f"OpenAI-compatible API serving `{model}`."},
        "paths": {
            "/v1/chat/completions": {"post": {"requestBody": body(ChatCompletionRequest), "responses": answer}},
            "/v1/completions": {"post": {"requestBody": body(CompletionRequest), "responses": answer}},
            "/tokenize": {"post": {"requestBody": body(TokenizeRequest), "responses": answer}},
            "/v1/models": {"get": {"responses": {"200": {"description": "The served model"}}}},
            "/health": {"get": {"responses": {"200": {"description": "An engine replica is running"},
                                              "503": error}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}}}},
        },
        "components": {"schemas": schemas},
    }
