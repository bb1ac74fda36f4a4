"""Caps on what one request may ask for, checked in the router before anything is
tokenized or sent to an engine. Each violation is a 400 (413 for the prompt's size)
whose ``param`` names the field."""

from __future__ import annotations

from typing import Any

from deployments.config import RequestLimits
from deployments.core.errors import APIError


def prompt_chars(messages: list[Any] | None, prompt: Any) -> int:
    """Characters of text the chat format and the tokenizer would have to go through."""
    if messages is None:
        return len(prompt) if isinstance(prompt, (str, list)) else 0
    total = 0
    for message in messages:
        content = message.content
        if isinstance(content, list):
            total += sum(len(part.text) for part in content)
        elif content:
            total += len(content)
        for call in message.tool_calls or ():
            total += len(call.function.name) + len(call.function.arguments)
    return total


def check_limits(limits: RequestLimits, max_tokens_limit: int | None, *, messages: list[Any] | None = None,
                 prompt: Any = None, tools: list[Any] | None = None, stop: Any = None,
                 max_tokens: int | None = None, max_tokens_param: str = "max_tokens", choices: int = 1,
                 default_max_tokens: int | None = None, logprobs: int | None = None,
                 logprobs_param: str = "top_logprobs", stream: bool = False) -> None:
    """Raise the APIError for the first cap a request goes over. ``logprobs``: the top
    log-probabilities asked per token (0: the chosen token's only; None: none)."""
    param = "messages" if messages is not None else "prompt"
    if messages is not None and len(messages) > limits.max_messages:
        raise APIError(400, f"messages: {len(messages)} messages, more than the {limits.max_messages} allowed.",
                       param="messages")
    size = prompt_chars(messages, prompt)
    if size > limits.max_prompt_chars:
        raise APIError(413, f"{param}: {size} characters, more than the {limits.max_prompt_chars} allowed.",
                       param=param, code="request_too_large")
    if tools:
        if len(tools) > limits.max_tools:
            raise APIError(400, f"tools: {len(tools)} tools, more than the {limits.max_tools} allowed.",
                           param="tools")
        for i, tool in enumerate(tools):
            chars = len(str(tool.function))
            if chars > limits.max_tool_chars:
                raise APIError(400, f"tools.{i}: {chars} characters, more than the {limits.max_tool_chars} "
                                    "allowed per tool.", param=f"tools.{i}")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if len(stops) > limits.max_stop_sequences:
        raise APIError(400, f"stop: {len(stops)} stop sequences, more than the {limits.max_stop_sequences} "
                            "allowed.", param="stop")
    if any(len(s) > limits.max_stop_chars for s in stops):
        raise APIError(400, f"stop: a stop sequence is longer than {limits.max_stop_chars} characters.",
                       param="stop")
    if max_tokens_limit is not None and max_tokens is not None and max_tokens > max_tokens_limit:
        raise APIError(400, f"{max_tokens_param}: {max_tokens} is more than this service's limit of "
                            f"{max_tokens_limit}.", param=max_tokens_param)
    # n x max_tokens as a whole; one choice is bounded by the context (the engine's 400) and
    # max_tokens_limit already, and its own error names the field better.
    per_choice = max_tokens if max_tokens is not None else default_max_tokens
    if choices > 1 and per_choice is not None and choices * per_choice > limits.max_total_tokens:
        raise APIError(400, f"n: {choices} choices of {per_choice} tokens is {choices * per_choice} tokens, more than "
                            f"the {limits.max_total_tokens} one request may ask for.", param="n")
    if logprobs is not None and not stream:
        tokens = per_choice if per_choice is not None else limits.max_total_tokens
        entries = choices * tokens * (logprobs + 1)
        if entries > limits.max_whole_logprobs:
            raise APIError(400, f"{logprobs_param}: {choices} choice(s) x {tokens} tokens x {logprobs + 1} "
                                f"log-probabilities is {entries}, more than the {limits.max_whole_logprobs} a whole "
                                "response may carry; stream it, or ask for fewer tokens or log-probabilities.",
                           param=logprobs_param)
