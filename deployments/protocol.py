"""OpenAI wire format: request models, the error shape, and whole (non-streamed) responses.

Requests are validated once, here, with pydantic; everything past this module works
on plain values. Responses are built as dicts: they are written once per request,
and streamed chunks (see :mod:`deployments.sse`) never go through pydantic at all.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class OpenAIError(Exception):
    """A request we refuse, carried to the HTTP layer with its status and OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The one place the OpenAI error shape is written."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_path(loc: tuple[Any, ...]) -> list[Any]:
    """The field part of a pydantic location: pydantic appends union member tags
    (``content.str``, ``prompt.list[int]``) that name types, not fields."""
    path = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _UNION_TAGS):
            break
        path.append(part)
    return path


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """Turn pydantic's first complaint into a 400 that names the offending field."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(p) for p in _field_path(first["loc"])) or None
    message = first["msg"].removeprefix("Value error, ")
    if param is None:
        # Whole-model checks below write "field: reason"; recover the field name.
        head, sep, _ = message.partition(": ")
        param = head if sep and head.isidentifier() else None
        return OpenAIError(400, message, param=param)
    return OpenAIError(400, f"{param}: {message}", param=param)


class WireModel(BaseModel):
    """Base of every request model: unknown fields are ignored, as OpenAI's API does."""

    model_config = ConfigDict(extra="ignore")


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class FunctionCall(WireModel):
    name: str = Field(min_length=1)
    arguments: str = "{}"


class ToolCallIn(WireModel):
    """A tool call in an assistant message the client sends back (conversation history)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        """The dict a chat template reads. 'developer' is OpenAI's new name for 'system'."""
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class Tool(WireModel):
    """An OpenAI tool. ``function`` stays a plain dict: its key order is rendered into the prompt."""

    type: Literal["function"]
    function: dict[str, Any]

    @model_validator(mode="after")
    def _named(self) -> Tool:
        name = self.function.get("name")
        if not isinstance(name, str) or not name.strip() or "\n" in name:
            raise ValueError("function.name must be a non-empty single-line string")
        return self


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: FunctionCall | dict[str, Any]

    @property
    def name(self) -> str | None:
        return self.function.name if isinstance(self.function, FunctionCall) else self.function.get("name")


class StreamOptions(WireModel):
    include_usage: bool = False


class SamplingFields(WireModel):
    """Sampling fields shared by chat and text completions, with OpenAI's (and vLLM's) ranges."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    stop: str | list[str] | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extension: run to max_tokens (benchmarks).")
    n: int = Field(default=1, ge=1)
    logprobs: Any = None
    user: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> SamplingFields:
        if self.n != 1:
            raise ValueError("n: only n=1 is supported")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs: not supported")
        if isinstance(self.stop, list) and any(not s for s in self.stop):
            raise ValueError("stop: stop strings must not be empty")
        return self

    def sampling_kwargs(self) -> dict[str, Any]:
        """vLLM SamplingParams keyword arguments for the fields the client set."""
        kwargs: dict[str, Any] = {}
        for name in ("temperature", "top_p", "top_k", "min_p", "seed",
                     "presence_penalty", "frequency_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.stop:
            kwargs["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.ignore_eos:
            kwargs["ignore_eos"] = True
        return kwargs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if self.tool_choice == "required":
            raise ValueError("tool_choice: 'required' is not supported; use 'auto' or name a function")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function["name"] for t in self.tools or []}
            if self.tool_choice.name not in names:
                raise ValueError(f"tool_choice: {self.tool_choice.name!r} is not one of the tools")
        return self

    def active_tools(self) -> list[dict[str, Any]] | None:
        """The tools to offer the model: none for tool_choice 'none', only the named one
        for a named choice (GLM-4 cannot be forced to call, but it can be offered just one)."""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump() for t in self.tools]
        if isinstance(self.tool_choice, NamedToolChoice):
            tools = [t for t in tools if t["function"]["name"] == self.tool_choice.name]
        return tools

    @property
    def output_limit(self) -> int | None:
        """``max_completion_tokens`` is OpenAI's newer name and wins over ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise ValueError("prompt: only one prompt per request is supported")
            self.prompt = self.prompt[0]
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be empty")
        if self.echo:
            raise ValueError("echo: not supported")
        if self.suffix:
            raise ValueError("suffix: not supported")
        return self


class TokenizeRequest(WireModel):
    """``POST /tokenize``: a chat (``messages``, optional ``tools``) or a text ``prompt``."""

    model: str
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = None
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("messages: give either messages or prompt")
        return self


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(request_id: str, model: str, text: str | None, finish_reason: str | None,
                    prompt_tokens: int, completion_tokens: int,
                    tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A whole ``chat.completion`` object (with ``tool_calls`` when the model called a tool)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(request_id: str, model: str, text: str, finish_reason: str | None,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A whole ``text_completion`` object."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def model_list(model_id: str, max_model_len: int, created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [{
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "glm-serve",
            "max_model_len": max_model_len,
        }],
    }
