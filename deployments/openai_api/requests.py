"""OpenAI wire format, requests: the request models, and a validation error as a 400.

Requests are validated once, here, with pydantic; everything past this module works
on plain values. Responses are plain dicts (:mod:`deployments.openai_api.responses`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.core.errors import APIError

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


def from_validation_error(exc: ValidationError) -> APIError:
    """Turn pydantic's first complaint into a 400 that names the offending field."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(p) for p in _field_path(first["loc"])) or None
    message = first["msg"].removeprefix("Value error, ")
    if param is None:
        # Whole-model checks below write "field: reason"; recover the field name.
        head, sep, _ = message.partition(": ")
        param = head if sep and head.isidentifier() else None
        return APIError(400, message, param=param)
    return APIError(400, f"{param}: {message}", param=param)


MAX_CHOICES = 16
"""Most choices (``n``) one request may ask for."""
MAX_LOGIT_BIAS = 300
"""Most logit_bias entries in one request (OpenAI's own cap)."""
_TOKEN_ID = re.compile(r"^[0-9]{1,10}$")
MAX_TOKENS = 2**31 - 1
"""Largest token count a request may name (vLLM's own fields are 32-bit): past it a 400 names
the field, before the number reaches any arithmetic (10**400 would overflow a float)."""
MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on chat ``top_logprobs``."""
MAX_COMPLETION_LOGPROBS = 5
"""OpenAI's limit on completions ``logprobs``."""


class WireModel(BaseModel):
    """Base of the request models. Nested objects ignore fields they do not know (an SDK
    echoes a returned message back with extra keys); top-level fields are checked by
    :class:`SamplingFields`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


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


class JsonSchema(WireModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format: type 'json_schema' needs a json_schema object")
        return self

    def structured(self) -> dict[str, Any] | None:
        """vLLM ``StructuredOutputsParams`` fields for this format (None for plain text)."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            assert self.json_schema is not None
            return {"json": self.json_schema.schema_}
        return None


# Fields OpenAI's API defines that glm-serve does not implement, per endpoint: a request
# that sets one (to anything but null or the listed no-op value) gets a 400 naming it.
UNSUPPORTED_CHAT_FIELDS: dict[str, Any] = {
    "audio": None, "modalities": None, "prediction": None, "functions": None, "function_call": None,
    "web_search_options": None, "metadata": None, "reasoning_effort": None, "verbosity": None,
    "prompt_cache_key": None, "safety_identifier": None, "service_tier": None, "store": False,
}
UNSUPPORTED_COMPLETION_FIELDS: dict[str, Any] = {"best_of": 1, "echo": False, "suffix": None}


class SamplingFields(WireModel):
    """Sampling fields shared by chat and text completions, with OpenAI's (and vLLM's) ranges.

    Unknown top-level fields are refused by name: an app that moves here by changing
    ``base_url`` must learn that a field it relies on does nothing, not find out later.
    """

    unsupported: ClassVar[dict[str, Any]] = {}

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOKENS)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extension: run to max_tokens (benchmarks).")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            if name in cls.model_fields or name in ("stream_options",):
                continue
            if name in cls.unsupported:
                if value is None or value == cls.unsupported[name]:
                    continue
                raise ValueError(f"{name}: not supported by glm-serve")
            raise ValueError(f"{name}: unrecognized request argument")
        return data

    @model_validator(mode="after")
    def _checked(self) -> SamplingFields:
        if isinstance(self.stop, list) and any(not s for s in self.stop):
            raise ValueError("stop: stop strings must not be empty")
        if self.logit_bias and len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias: {len(self.logit_bias)} entries, more than the {MAX_LOGIT_BIAS} allowed")
        for key, bias in (self.logit_bias or {}).items():
            if not _TOKEN_ID.match(key):  # ASCII digits only: int() also takes "٣" and "-1"
                raise ValueError(f"logit_bias: keys are token ids, not {key[:32]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: bias {bias} for token {key} is outside [-100, 100]")
        return self

    def sampling_kwargs(self) -> dict[str, Any]:
        """vLLM SamplingParams keyword arguments for the fields the client set."""
        kwargs: dict[str, Any] = {"n": self.n} if self.n != 1 else {}
        for name in ("temperature", "top_p", "top_k", "min_p", "seed",
                     "presence_penalty", "frequency_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.logit_bias:
            kwargs["logit_bias"] = {int(k): v for k, v in self.logit_bias.items()}
        if self.stop:
            kwargs["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.ignore_eos:
            kwargs["ignore_eos"] = True
        return kwargs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    unsupported = UNSUPPORTED_CHAT_FIELDS

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice: 'required' needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function["name"] for t in self.tools or []}
            if self.tool_choice.name not in names:
                raise ValueError(f"tool_choice: {self.tool_choice.name!r} is not one of the tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs true")
        return self

    def active_tools(self) -> list[dict[str, Any]] | None:
        """The tools to offer the model: none for tool_choice 'none', only the named one
        for a named choice."""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump() for t in self.tools]
        if isinstance(self.tool_choice, NamedToolChoice):
            tools = [t for t in tools if t["function"]["name"] == self.tool_choice.name]
        return tools

    @property
    def force_tool_call(self) -> bool:
        """``tool_choice`` 'required' or a named function: the reply must be a call."""
        return bool(self.tools) and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice))

    @property
    def logprobs_count(self) -> int | None:
        """Top logprobs per token for the engine (0: the chosen token's only), None: none."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def output_limit(self) -> int | None:
        """``max_completion_tokens`` is OpenAI's newer name and wins over ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    unsupported = UNSUPPORTED_COMPLETION_FIELDS

    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise ValueError("prompt: only one prompt per request is supported")
            self.prompt = self.prompt[0]
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be empty")
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
