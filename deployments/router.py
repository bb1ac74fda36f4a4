"""The router deployment: glm-serve's HTTP ingress.

It parses and validates OpenAI requests, hands each to an engine replica through a
``DeploymentHandle`` (Serve's request router picks the replica), and relays the
engine's chunks, which arrive on this replica's stream channel
(:mod:`deployments.stream_channel`), to the client as server-sent events the moment
they arrive: no timers, no batching window. Every response names the engine replica
that served it in the ``x-glm-serve-replica`` header.

Request life cycle::

    read body (413) -> parse JSON (400) -> validate (400) -> model name (404)
      -> engine.generate (chunks over the stream channel) / engine.complete
      -> an APIError (the router's or an engine's refusal) -> its status, in __call__
      -> first chunk -> 200 + SSE stream
      -> a failure after the first byte -> SSE error event, then [DONE]

Future concerns have their place here: authentication and admission control belong
in ``__call__`` before dispatch; replica choice (prefix/conversation affinity) belongs
to the engine deployment's Serve request router, not to this class.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from chat_formats import get_chat_format
from deployments import protocol
from deployments.config import ModelConfig, RouterConfig
from deployments.errors import APIError, EngineUnavailable
from deployments.generation import GenerationChunk, GenerationRequest, GenerationResult
from deployments.metrics import RouterMetrics
from deployments.sse import DONE, StreamCounts, StreamEncoder, error_event, events
from deployments.stream_channel import ChannelClosed, IncomingStream, StreamReceiver

logger = logging.getLogger("glm_serve.router")

REPLICA_HEADER = "x-glm-serve-replica"

Handler = Callable[[Request], Awaitable[Response]]


def engine_failure(exc: BaseException) -> APIError:
    """Map an exception from the engine hop to the answer a client should get.

    An :class:`APIError` (an engine's refusal) is its own answer; the rest are failures
    of the service, told apart by type (Ray re-raises a replica's exception as a
    subclass of its class)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackPressureError):
        return APIError(503, "The service is overloaded; retry later.", "service_unavailable", code="overloaded")
    if isinstance(exc, DeploymentUnavailableError):
        return APIError(503, "No engine replica is available.", "service_unavailable")
    if isinstance(exc, ChannelClosed):
        return APIError(503, "The engine replica's stream was lost; retry the request.", "service_unavailable")
    if isinstance(exc, (EngineUnavailable, RayActorError)):
        return APIError(503, "The engine replica failed; retry the request.", "service_unavailable")
    return APIError(500, f"Internal error in the engine: {type(exc).__name__}", "server_error")


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


async def _first_chunk(stream: IncomingStream) -> GenerationChunk:
    """The stream's first chunk; raises the APIError the client should get instead."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        raise APIError(500, "The engine ended the stream without output.", "server_error") from None
    except Exception as exc:
        raise engine_failure(exc) from None


def _json(body: dict[str, Any], replica: str | None = None) -> JSONResponse:
    headers = {REPLICA_HEADER: replica} if replica else None
    return JSONResponse(body, headers=headers)


@serve.deployment
class RouterDeployment:
    """OpenAI-compatible HTTP API in front of the engine deployment."""

    def __init__(self, engine: DeploymentHandle, model: ModelConfig, config: RouterConfig):
        self._engine = engine
        # Chunks come back over a direct connection from the engine replicas; Serve
        # carries the request (deployments/stream_channel.py says why).
        self._receiver = StreamReceiver(config.stream_host or _node_ip())
        self._model_name = model.name
        self._format = get_chat_format(model.chat_format)
        self._config = config
        self._metrics = RouterMetrics()
        self._created = int(time.time())
        self._max_model_len: int | None = None
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("POST", "/tokenize"): self._tokenize,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._render_metrics,
        }

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        handler = self._routes.get((request.method, path))
        start = time.perf_counter()
        if handler is None:
            if any(p == path for _, p in self._routes):
                return self._error(path, APIError(405, f"Method {request.method} is not allowed on {path}."))
            # Unknown paths share one metrics label: a scanner must not mint a series per URL.
            return self._error("unmatched", APIError(404, f"No route {path}.", "not_found_error"))
        try:
            response = await handler(request)
        except APIError as exc:
            return self._error(path, exc)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # never let one request take the replica's loop down
            logger.exception("unhandled error on %s", path)
            return self._error(path, APIError(500, f"Internal error: {type(exc).__name__}", "server_error"))
        if not isinstance(response, StreamingResponse):
            self._metrics.requests.labels(path, str(response.status_code)).inc()
            self._metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    def _error(self, path: str, error: APIError) -> JSONResponse:
        self._metrics.requests.labels(path, str(error.status)).inc()
        headers = {"retry-after": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    # ---- input ------------------------------------------------------------------
    async def _read_json(self, request: Request) -> dict[str, Any]:
        limit = self._config.max_request_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise APIError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"Request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "Request body must be a JSON object.")
        return data

    def _validate(self, model_cls: type[protocol.SamplingFields], data: dict[str, Any]) -> Any:
        try:
            parsed = model_cls.model_validate(data)
        except ValidationError as exc:
            raise protocol.from_validation_error(exc) from None
        if parsed.model != self._model_name:
            raise APIError(
                404, f"The model `{parsed.model}` does not exist. This server serves `{self._model_name}`.",
                "not_found_error", param="model", code="model_not_found",
            )
        return parsed

    # ---- endpoints --------------------------------------------------------------
    async def _chat_completions(self, request: Request) -> Response:
        start = time.perf_counter()
        parsed: protocol.ChatCompletionRequest = self._validate(
            protocol.ChatCompletionRequest, await self._read_json(request)
        )
        tools = self._tools(parsed)
        generation = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages],
            tools=tools,
            force_tool_call=parsed.force_tool_call,
            structured=parsed.response_format.structured() if parsed.response_format else None,
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs_count,
            max_tokens=parsed.output_limit,
        )
        if parsed.stream:
            encoder = StreamEncoder("chat", generation.request_id, self._model_name)
            return await self._stream(request.url.path, generation, encoder, parsed.include_usage, start,
                                      lambda: self._format.stream_parser(tools))
        result = await self._complete(generation)
        choices = []
        for index, choice in enumerate(result.choices):
            call = self._format.parse_reply(choice.text, tools)
            choices.append(protocol.chat_choice(
                index, None if call else choice.text, "tool_calls" if call else choice.finish_reason,
                tool_calls=[call.openai()] if call else None, logprobs=choice.logprobs,
            ))
        body = protocol.chat_completion(generation.request_id, self._model_name, choices,
                                        result.prompt_tokens, result.completion_tokens)
        return _json(body, replica=result.replica_id)

    def _tools(self, parsed: protocol.ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """The tools to render, or a 400 when this model's chat format has no tool calls."""
        self._check_tool_support(parsed.tools)
        return parsed.active_tools()

    def _check_tool_support(self, tools: list[protocol.Tool] | None) -> None:
        if tools and not self._format.supports_tools:
            raise APIError(400, f"tools: the model `{self._model_name}` (chat_format "
                                f"'{self._format.name}') does not support tool calls.", param="tools")

    async def _completions(self, request: Request) -> Response:
        start = time.perf_counter()
        parsed: protocol.CompletionRequest = self._validate(protocol.CompletionRequest, await self._read_json(request))
        generation = GenerationRequest(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            prompt=parsed.prompt,  # type: ignore[arg-type]  (a one-string list was unwrapped)
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs,
            max_tokens=parsed.max_tokens,
        )
        if parsed.stream:
            encoder = StreamEncoder("text", generation.request_id, self._model_name)
            return await self._stream(request.url.path, generation, encoder, parsed.include_usage, start)
        result = await self._complete(generation)
        body = protocol.text_completion(generation.request_id, self._model_name, result.choices,
                                        result.prompt_tokens)
        return _json(body, replica=result.replica_id)

    async def _tokenize(self, request: Request) -> Response:
        parsed: protocol.TokenizeRequest = self._validate(protocol.TokenizeRequest, await self._read_json(request))
        self._check_tool_support(parsed.tools)
        generation = GenerationRequest(
            request_id=f"tokenize-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages] if parsed.messages else None,
            prompt=parsed.prompt,
            tools=[t.model_dump() for t in parsed.tools] if parsed.tools else None,
        )
        try:
            result = await self._engine.tokenize.remote(generation)
        except Exception as exc:
            raise engine_failure(exc) from None
        return _json({"model": self._model_name, **result})

    async def _models(self, request: Request) -> Response:
        if self._max_model_len is None:
            info = await self._engine_info()
            self._max_model_len = info["max_model_len"]
        return _json(protocol.model_list(self._model_name, self._max_model_len, self._created))

    async def _health(self, request: Request) -> Response:
        try:
            info = await self._engine_info()
        except APIError as exc:
            return self._error("/health", exc)
        return _json({"status": "ok", "model": info["id"], "gpu_ids": info["gpu_ids"]}, replica=info["replica_id"])

    async def _render_metrics(self, request: Request) -> Response:
        return Response(self._metrics.render(), media_type=self._metrics.content_type)

    async def _engine_info(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._engine.model_info.remote(), self._config.health_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(503, "No engine replica answered in time.", "service_unavailable") from None
        except Exception as exc:
            raise engine_failure(exc) from None

    # ---- generation -------------------------------------------------------------
    async def _complete(self, generation: GenerationRequest) -> GenerationResult:
        self._metrics.in_flight.inc()
        try:
            result = await self._engine.complete.remote(generation)
        except Exception as exc:
            raise engine_failure(exc) from None
        finally:
            self._metrics.in_flight.dec()
        self._metrics.prompt_tokens.inc(result.prompt_tokens)
        self._metrics.completion_tokens.inc(result.completion_tokens)
        return result

    async def _stream(self, path: str, generation: GenerationRequest, encoder: StreamEncoder,
                      include_usage: bool, start: float, new_parser: Callable[[], Any] = lambda: None) -> Response:
        """Start the engine's generation and peek its first item to choose between an error
        status and a 200 stream."""
        address = await self._receiver.start()
        call = self._engine.generate.remote(generation, address)
        choices = generation.sampling.get("n", 1)
        stream = IncomingStream(self._receiver, generation.request_id, call, call.cancel, choices)
        try:
            first = await _first_chunk(stream)
        except BaseException:  # a refusal, a failure, or the client gone: stop the engine's work
            stream.close()
            raise
        self._metrics.ttft.observe(time.perf_counter() - start)
        return StreamingResponse(
            self._relay(path, stream, first, encoder, include_usage, start, new_parser, choices),
            media_type="text/event-stream",
            headers={REPLICA_HEADER: first.replica_id, "cache-control": "no-cache"},
        )

    async def _relay(self, path: str, chunks: IncomingStream, first: GenerationChunk,
                     encoder: StreamEncoder, include_usage: bool, start: float,
                     new_parser: Callable[[], Any], choices: int) -> AsyncIterator[bytes]:
        """Write the engine's chunks as SSE events (deployments.sse.events); count and clean up."""
        self._metrics.in_flight.inc()
        counts = StreamCounts(first.prompt_tokens)
        status = "200"
        try:
            async for event in events(first, chunks, encoder, counts, new_parser, choices, include_usage):
                yield event
        except (asyncio.CancelledError, GeneratorExit, RequestCancelledError):
            status = "499"  # the client went away; the finally below stops the engine's work
            raise
        except Exception as exc:
            failure = engine_failure(exc)
            logger.warning("stream %s failed after it began: %s", encoder.request_id, exc)
            status = str(failure.status)
            yield error_event(failure.message, failure.type, failure.code)
            yield DONE
        finally:
            chunks.close()  # cancels the engine's generation if the stream did not finish
            self._metrics.in_flight.dec()
            self._metrics.prompt_tokens.inc(first.prompt_tokens)
            self._metrics.completion_tokens.inc(counts.completion_tokens)
            self._metrics.requests.labels(path, status).inc()
            self._metrics.latency.labels(path).observe(time.perf_counter() - start)

