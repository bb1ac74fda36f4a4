"""What every endpoint handler shares: the engine handle, the config, the chat format,
and the steps each request goes through (its body, validation, deadlines, responses)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from chat_formats import ChatFormat
from deployments.config import IngressConfig
from deployments.core.errors import APIError, model_not_found
from deployments.core.generation import GenerationRequest
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.admission import Admission
from deployments.ingress.metrics import IngressMetrics
from deployments.lora.catalog import AdapterCatalog
from deployments.openai_api.json_body import parse_object
from deployments.openai_api.requests import from_validation_error
from deployments.stream_channel import StreamReceiver
from deployments.tenants.tenants_file import Tenant

REPLICA_HEADER = "x-glm-serve-replica"
"""Names the engine replica that served a generation."""


@dataclass
class IngressContext:
    """One router replica's shared state, handed to each endpoint handler."""

    engine: DeploymentHandle
    receiver: StreamReceiver
    """Where engine replicas send this replica's streamed chunks (deployments/stream_channel/)."""
    model_name: str
    chat_format: ChatFormat
    config: IngressConfig
    metrics: IngressMetrics
    admission: Admission
    default_max_tokens: int | None = None
    """The model's default_max_tokens: what a request that sets none may generate per choice."""
    adapters: AdapterCatalog = field(default_factory=lambda: AdapterCatalog(None))
    """The model's LoRA adapters, each a ``model`` a request may name (deployments/lora/catalog.py)."""
    created: int = field(default_factory=lambda: int(time.time()))

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The request's body as a JSON object: 413 past ``router.max_request_body_bytes``
        (declared or read), 408 when it has not all arrived within ``router.deadlines.body_timeout_s``
        (a client trickling it holds an admitted place), 400 when it is not a JSON object
        (:func:`deployments.openai_api.json_body.parse_object`)."""
        limit = self.config.max_request_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()

        async def read() -> None:
            async for part in request.stream():
                body.extend(part)
                if len(body) > limit:
                    raise _too_large(limit)

        timeout_s = self.config.deadlines.body_timeout_s
        try:
            await asyncio.wait_for(read(), timeout_s)
        except asyncio.TimeoutError:
            raise APIError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           code="body_timeout") from None
        return parse_object(bytes(body))

    async def validate(self, model_cls: type[Any], data: dict[str, Any], record: RequestRecord) -> Any:
        """``data`` as ``model_cls`` (400 naming the field), for this server's model or one of
        its adapters (``record.adapter``), which the caller's tenant may call (404 otherwise,
        as for a model that does not exist: a tenant does not learn what others may call)."""
        try:
            parsed = model_cls.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        tenant: Tenant | None = record.caller
        if tenant is not None and not tenant.may_call(parsed.model):
            raise model_not_found(f"The model `{parsed.model}` does not exist or you do not have access to it.")
        if parsed.model != self.model_name:
            if await self.adapters.lookup(parsed.model) is None:
                raise model_not_found(
                    f"The model `{parsed.model}` does not exist. This server serves `{self.model_name}`"
                    + (" and its adapters (GET /v1/models lists them)." if self.adapters.enabled else "."))
            record.adapter = parsed.model
        return parsed

    def with_deadlines(self, generation: GenerationRequest, request: Request, user: str | None) -> GenerationRequest:
        """``generation`` with its affinity hint and its deadlines (wall clock: the engine may
        run on another node)."""
        generation.session_id = request.headers.get("x-session-id") or user
        now = time.time()
        generation.first_token_deadline = now + self.config.deadlines.first_token_timeout_s
        generation.deadline = now + self.config.deadlines.request_timeout_s
        return generation

    def check_sampling(self, parsed: Any, record: RequestRecord) -> None:
        """400 for sampling this service does not allow: ``ignore_eos`` unless the tenant's
        ``allow_ignore_eos``, or else ``router.allow_ignore_eos``, allows it."""
        tenant: Tenant | None = record.caller
        allowed = self.config.allow_ignore_eos
        if tenant is not None and tenant.allow_ignore_eos is not None:
            allowed = tenant.allow_ignore_eos
        if parsed.ignore_eos and not allowed:
            raise APIError(400, "ignore_eos: this service does not allow it (router.allow_ignore_eos).",
                           param="ignore_eos")

    def max_tokens_limit(self, record: RequestRecord) -> int | None:
        """The largest max_tokens the caller may ask for: its tenant's limit within the router's."""
        limits = [self.config.max_tokens_limit, getattr(record.caller, "max_tokens_limit", None)]
        return min((v for v in limits if v is not None), default=None)

    async def reserve_tokens(self, record: RequestRecord, generation: GenerationRequest) -> None:
        """Reserve what ``generation`` may cost against its tenant's tokens per minute: its
        prompt, bounded by its characters (the engine tokenizes it later), and the most it may
        generate; 429 when the tenant has not that many left. Also give it its tenant's
        priority, prefix-cache salt and adapter-load budget. The request is charged what the
        engine really counted when it ends; the rest of the reservation comes back."""
        tenant: Tenant | None = record.caller
        if tenant is None:
            return
        generation.priority = 1 if tenant.batch else 0
        generation.cache_salt = tenant.cache_salt
        generation.tenant, generation.adapter_loads_per_minute = tenant.name, tenant.adapter_loads_per_minute
        if record.ticket is not None and self.admission.quotas is not None:
            per_choice = generation.max_tokens or self.default_max_tokens or self.max_tokens_limit(record) or 0
            output = per_choice * generation.sampling.get("n", 1)
            await self.admission.quotas.reserve_tokens(record.ticket, output + prompt_bound(generation))

    def check_tool_support(self, tools: list[Any] | None) -> None:
        """400 when the request has tools and this model's chat format has no tool calls."""
        if tools and not self.chat_format.supports_tools:
            raise APIError(400, f"tools: the model `{self.model_name}` (chat_format "
                                f"'{self.chat_format.name}') does not support tool calls.", param="tools")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


def json_response(body: dict[str, Any], record: RequestRecord | None = None) -> JSONResponse:
    """A 200 JSON response, naming the engine replica that served it when there was one."""
    headers = {REPLICA_HEADER: record.replica} if record is not None and record.replica else None
    return JSONResponse(body, headers=headers)


def error_response(error: APIError, body: dict[str, Any] | None = None) -> JSONResponse:
    """``error`` as an HTTP response (its OpenAI body, or ``body``), with the headers its
    status calls for (:meth:`APIError.headers`)."""
    return JSONResponse(error.body() if body is None else body, status_code=error.status,
                        headers=error.headers() or None)


def prompt_bound(generation: GenerationRequest) -> int:
    """A bound on ``generation``'s prompt tokens from its text, before anything is tokenized:
    its characters (a token of a byte-level tokenizer covers at least one character but for
    rare multi-token characters), its tools' JSON, or its token ids' count. Reserving it keeps
    an almost empty bucket from admitting many long prompts with ``max_tokens`` 1."""
    if generation.messages is not None:
        text = sum(len(str(m.get("content") or "")) for m in generation.messages)
        return text + (len(str(generation.tools)) if generation.tools else 0)
    prompt = generation.prompt
    return len(prompt) if isinstance(prompt, (str, list)) else 0
