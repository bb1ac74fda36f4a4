"""The router deployment: glm-serve's HTTP ingress.

It parses and validates OpenAI requests, hands each to an engine replica through a
``DeploymentHandle`` (Serve's request router picks the replica), and relays the
engine's chunks, which arrive on this replica's stream channel
(:mod:`deployments.stream_channel`), to the client as server-sent events the moment
they arrive: no timers, no batching window. Every response names the engine replica
that served it in the ``x-glm-serve-replica`` header.

Request life cycle::

    API key (401) -> read body (413) -> parse JSON (400) -> validate (400) -> model name (404)
      -> limits (400/413) -> engine.generate (chunks over the stream channel) / engine.complete
         (retried once on another replica if the engine failed before any output)
      -> an APIError (the router's or an engine's refusal, a deadline) -> its status, in __call__
      -> first chunk -> 200 + SSE stream
      -> a failure or a deadline after the first byte -> SSE error event, then [DONE]
      -> one access-log line and the metrics, once, when the request ends

Admission: glm-serve's gate in Serve's proxy refuses past ``router.max_in_flight_requests``
x the router replicas (:mod:`deployments.proxy_gate`), this class past the cap on its own
(:meth:`_admit`), Serve's proxy past the router deployment's own bounds, and the engine
deployment's ``max_ongoing_requests`` bounds what runs; each answers 503 with Retry-After.
Serve's queues are sized at least to the cap (config.py says why).

Replica choice belongs to the engine deployment's Serve request router, not to this
class; with the shared placement table on, this class awaits that router's lookup before
the handle call (:meth:`RouterDeployment._place`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
import weakref
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
from deployments import access_log, protocol
from deployments.access_log import RequestRecord
from deployments.auth import check_bearer, load_api_keys
from deployments.config import ModelConfig, RouterConfig
from deployments.engine_stats import request_router_for
from deployments.errors import APIError, EngineUnavailable, overloaded
from deployments.generation import GenerationChunk, GenerationRequest, GenerationResult
from deployments.limits import check_limits
from deployments.metrics import RouterMetrics
from deployments.sse import DONE, StreamCounts, StreamEncoder, error_event, events
from deployments.stream_channel import ChannelClosed, IncomingStream, StreamReceiver

logger = logging.getLogger("glm_serve.router")

REPLICA_HEADER = "x-glm-serve-replica"

Handler = Callable[[Request, RequestRecord], Awaitable[Response]]
RETRY_SETTLE_S = 10.0
"""Before retrying a stream whose connection was lost, wait this long at most for its
engine call to fail too, so that Serve knows the replica is dead and routes elsewhere."""
QUIET_ROUTES = frozenset({"/health", "/metrics"})
"""Probes and scrapes that succeed are counted but not logged: they come every few seconds."""
HEALTH_CACHE_S = 1.0
"""GET /health reuses Serve's view of the engine replicas for this long: a load
balancer's probes must not each become a call to Serve's controller."""


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


def retryable(exc: BaseException) -> bool:
    """Whether a request whose engine call failed this way, before any output, may be sent
    again: the replica or its engine died, or its stream was lost. A refusal is final."""
    return isinstance(exc, (RayActorError, EngineUnavailable, ChannelClosed)) and not isinstance(exc, APIError)


def _deadline_error(what: str, seconds: float) -> APIError:
    return APIError(504, f"The request timed out: {what} took more than {seconds:g} s.", "timeout_error",
                    code="timeout")


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _json(body: dict[str, Any], record: RequestRecord | None = None) -> JSONResponse:
    headers = {REPLICA_HEADER: record.replica} if record is not None and record.replica else None
    return JSONResponse(body, headers=headers)


def _error_response(error: APIError, body: dict[str, Any] | None = None) -> JSONResponse:
    """``error`` as an HTTP response (its OpenAI body, or ``body``), with the headers its
    status calls for (:meth:`APIError.headers`)."""
    return JSONResponse(error.body() if body is None else body, status_code=error.status,
                        headers=error.headers() or None)


@serve.deployment
class RouterDeployment:
    """OpenAI-compatible HTTP API in front of the engine deployment."""

    def __init__(self, engine: DeploymentHandle, model: ModelConfig, config: RouterConfig,
                 warm_engine: bool = True):
        self._engine = engine
        # Chunks come back over a direct connection from the engine replicas; Serve
        # carries the request (deployments/stream_channel.py says why).
        self._receiver = StreamReceiver(config.stream_host or _node_ip())
        self._model_name = model.name
        self._format = get_chat_format(model.chat_format)
        self._config = config
        self._api_keys = load_api_keys(config.api_keys_env, config.api_keys_file)
        self._open_paths = {"/health"} | ({"/metrics"} if config.metrics_without_key else set())
        self._metrics = RouterMetrics(export=config.export_ray_metrics)
        access_log.setup()
        self._created = int(time.time())
        self._max_model_len: int | None = None
        self._health: tuple[float, Response] | None = None
        self._generating = 0  # generation requests in this replica now (admission control)
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("POST", "/tokenize"): self._tokenize,
            ("GET", "/health"): self._health_check,
            ("GET", "/metrics"): self._render_metrics,
            ("GET", "/openapi.json"): self._openapi,
        }
        self._openapi_body = protocol.openapi_document(self._model_name)
        # One cheap call now, so that the handle learns the engine replicas before traffic
        # does: requests that arrive while it knows none wait in its queue (and, with an
        # engine max_queued_requests below a burst, were refused: 11 of a first burst of 32
        # in the e2e suite before the queues were sized to the router's cap). It waits in the
        # queue until an engine replica is up; its answer is not needed. Not when the
        # engines may scale to zero: the call would wake them.
        self._warmup = self._engine.model_info.remote() if warm_engine else None

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        handler = self._routes.get((request.method, path))
        # Unknown paths share one label: a scanner must not mint a metrics series per URL.
        record = RequestRecord(route=path if handler else "unmatched", method=request.method)
        try:
            if self._api_keys and path not in self._open_paths:
                check_bearer(request.headers.get("authorization"), self._api_keys)
            if handler is None:
                if any(p == path for _, p in self._routes):
                    raise APIError(405, f"Method {request.method} is not allowed on {path}.")
                raise APIError(404, f"No route {path}.", "not_found_error")
            if path in protocol.GENERATION_ROUTES:
                self._admit(record)
            response = await handler(request, record)
        except APIError as exc:
            return self._error(record, exc)
        except ClientDisconnect:
            record.status = 499
            self._finish(record)
            return Response(status_code=499)
        except asyncio.CancelledError:  # the client left while we waited: release its admission
            record.status = 499
            self._finish(record)
            raise
        except Exception as exc:  # never let one request take the replica's loop down
            logger.exception("unhandled error on %s", path)
            return self._error(record, APIError(500, f"Internal error: {type(exc).__name__}", "server_error"))
        if not isinstance(response, StreamingResponse):  # a stream's record ends in _relay
            record.status = response.status_code
            self._finish(record)
        return response

    def _admit(self, record: RequestRecord) -> None:
        """Refuse a generation request at once, before its body is read, when this replica
        already serves ``router.max_in_flight_requests``: under a burst the cheapest answer
        is the one that does no work. The count is released in :meth:`_finish`."""
        cap = self._config.max_in_flight_requests
        if cap is not None and self._generating >= cap:
            raise overloaded()
        self._generating += 1
        self._metrics.admitted.set(self._generating)
        record.admitted = True

    def _error(self, record: RequestRecord, error: APIError) -> JSONResponse:
        record.status, record.error_code = error.status, error.code or error.type
        self._finish(record)
        return _error_response(error)

    def _abandon(self, record: RequestRecord, stream: IncomingStream) -> None:
        if not record.finished:
            stream.close()
            record.status = 499
            self._finish(record)

    def _finish(self, record: RequestRecord) -> None:
        """The one place a request is counted and logged, when it ends (once)."""
        if record.finished:
            return
        record.finished = True
        if record.admitted:
            self._generating -= 1
            self._metrics.admitted.set(self._generating)
        duration_s = time.perf_counter() - record.start
        self._metrics.requests.labels(record.route, str(record.status)).inc()
        self._metrics.latency.labels(record.route).observe(duration_s)
        if record.status == 200 and record.ttft_s is not None and record.completion_tokens > 1:
            # A stream's mean inter-token latency, once per stream, never per token.
            self._metrics.time_per_output_token.observe(
                (duration_s - record.ttft_s) / (record.completion_tokens - 1))
        self._metrics.prompt_tokens.inc(record.prompt_tokens)
        self._metrics.completion_tokens.inc(record.completion_tokens)
        if record.route in protocol.GENERATION_ROUTES:
            self._metrics.export_routing()
        if record.status != 200 or record.route not in QUIET_ROUTES:
            access_log.logger.info(record.line())

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

    def _validate(self, model_cls: type[Any], data: dict[str, Any]) -> Any:
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

    def _stamp(self, generation: GenerationRequest, request: Request, user: str | None) -> GenerationRequest:
        """Stamp the request's affinity hint and deadlines (wall clock: the engine may run
        on another node)."""
        generation.session_id = request.headers.get("x-session-id") or user
        now = time.time()
        generation.first_token_deadline = now + self._config.first_token_timeout_s
        generation.deadline = now + self._config.request_timeout_s
        return generation

    # ---- endpoints --------------------------------------------------------------
    async def _chat_completions(self, request: Request, record: RequestRecord) -> Response:
        parsed: protocol.ChatCompletionRequest = self._validate(
            protocol.ChatCompletionRequest, await self._read_json(request)
        )
        check_limits(self._config.limits, self._config.max_tokens_limit, messages=parsed.messages,
                     tools=parsed.tools, stop=parsed.stop, max_tokens=parsed.output_limit,
                     max_tokens_param="max_completion_tokens" if parsed.max_completion_tokens else "max_tokens")
        tools = self._tools(parsed)
        generation = self._stamp(GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages],
            tools=tools,
            force_tool_call=parsed.force_tool_call,
            structured=parsed.response_format.structured() if parsed.response_format else None,
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs_count,
            max_tokens=parsed.output_limit,
        ), request, parsed.user)
        record.request_id = generation.request_id
        if self._config.log_prompts:
            record.text = {"messages": generation.messages}
        if parsed.stream:
            encoder = StreamEncoder("chat", generation.request_id, self._model_name)
            return await self._stream(record, generation, encoder, parsed.include_usage,
                                      lambda: self._format.stream_parser(tools))
        result = await self._complete(record, generation)
        choices = []
        for index, choice in enumerate(result.choices):
            call = self._format.parse_reply(choice.text, tools)
            choices.append(protocol.chat_choice(
                index, None if call else choice.text, "tool_calls" if call else choice.finish_reason,
                tool_calls=[call.openai()] if call else None, logprobs=choice.logprobs,
            ))
        body = protocol.chat_completion(generation.request_id, self._model_name, choices,
                                        result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        return _json(body, record)

    def _tools(self, parsed: protocol.ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """The tools to render, or a 400 when this model's chat format has no tool calls."""
        self._check_tool_support(parsed.tools)
        return parsed.active_tools()

    def _check_tool_support(self, tools: list[protocol.Tool] | None) -> None:
        if tools and not self._format.supports_tools:
            raise APIError(400, f"tools: the model `{self._model_name}` (chat_format "
                                f"'{self._format.name}') does not support tool calls.", param="tools")

    async def _completions(self, request: Request, record: RequestRecord) -> Response:
        parsed: protocol.CompletionRequest = self._validate(protocol.CompletionRequest, await self._read_json(request))
        check_limits(self._config.limits, self._config.max_tokens_limit, prompt=parsed.prompt, stop=parsed.stop,
                     max_tokens=parsed.max_tokens)
        generation = self._stamp(GenerationRequest(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            prompt=parsed.prompt,  # type: ignore[arg-type]  (a one-string list was unwrapped)
            sampling=parsed.sampling_kwargs(),
            logprobs=parsed.logprobs,
            max_tokens=parsed.max_tokens,
        ), request, parsed.user)
        record.request_id = generation.request_id
        if self._config.log_prompts:
            record.text = {"prompt": generation.prompt}
        if parsed.stream:
            encoder = StreamEncoder("text", generation.request_id, self._model_name)
            return await self._stream(record, generation, encoder, parsed.include_usage)
        result = await self._complete(record, generation)
        body = protocol.text_completion(generation.request_id, self._model_name, result.choices,
                                        result.prompt_tokens, result.cached_tokens)
        return _json(body, record)

    async def _tokenize(self, request: Request, record: RequestRecord) -> Response:
        parsed: protocol.TokenizeRequest = self._validate(protocol.TokenizeRequest, await self._read_json(request))
        check_limits(self._config.limits, None, messages=parsed.messages, prompt=parsed.prompt, tools=parsed.tools)
        self._check_tool_support(parsed.tools)
        generation = GenerationRequest(
            request_id=f"tokenize-{uuid.uuid4().hex}",
            messages=[m.as_template_message() for m in parsed.messages] if parsed.messages else None,
            prompt=parsed.prompt,
            tools=[t.model_dump() for t in parsed.tools] if parsed.tools else None,
        )
        record.request_id = generation.request_id
        try:
            result = await asyncio.wait_for(self._engine.tokenize.remote(generation), self._config.request_timeout_s)
        except asyncio.TimeoutError:
            raise _deadline_error("tokenizing", self._config.request_timeout_s) from None
        except Exception as exc:
            raise engine_failure(exc) from None
        record.prompt_tokens = result["count"]
        return _json({"model": self._model_name, **result})

    async def _models(self, request: Request, record: RequestRecord) -> Response:
        if self._max_model_len is None:
            try:
                info = await asyncio.wait_for(self._engine.model_info.remote(), self._config.health_timeout_s)
            except asyncio.TimeoutError:
                raise APIError(503, "No engine replica answered in time.", "service_unavailable") from None
            except Exception as exc:
                raise engine_failure(exc) from None
            self._max_model_len = info["max_model_len"]
        return _json(protocol.model_list(self._model_name, self._max_model_len, self._created))

    async def _health_check(self, request: Request, record: RequestRecord) -> Response:
        """200 while Serve has an engine replica running, else 503, from Serve's controller:
        never a call into an engine, so it does not wait behind generation."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] > HEALTH_CACHE_S:
            self._health = (now, await self._engine_health())
        return self._health[1]

    async def _engine_health(self) -> Response:
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), self._config.health_timeout_s)
            deployment = status.applications[self._engine.app_name].deployments[self._engine.deployment_name]
        except asyncio.TimeoutError:
            return _error_response(APIError(503, "Serve's controller did not answer in time.", "service_unavailable"))
        except Exception as exc:  # noqa: BLE001  (no status is no health)
            return _error_response(APIError(503, f"Serve's status is unavailable: {type(exc).__name__}",
                                            "service_unavailable"))
        running = int(deployment.replica_states.get("RUNNING", 0))
        body = {"status": "ok" if running else "unavailable", "model": self._model_name,
                "engine_replicas_running": running,
                "engine_status": getattr(deployment.status, "value", str(deployment.status))}
        if not running:
            error = APIError(503, "No engine replica is running.", "service_unavailable")
            return _error_response(error, {**body, "error": error.body()["error"]})
        return JSONResponse(body)

    async def _openapi(self, request: Request, record: RequestRecord) -> Response:
        return JSONResponse(self._openapi_body)

    async def _render_metrics(self, request: Request, record: RequestRecord) -> Response:
        return Response(self._metrics.render(), media_type=self._metrics.content_type)

    # ---- generation -------------------------------------------------------------
    async def _place(self, generation: GenerationRequest) -> None:
        """Let the engine deployment's request router ask the shared placement table where
        this request's conversation lives, here on this replica's loop and before the
        handle call: inside Serve's routing step the wait held other requests in the
        handle's bounded queue (deployments/request_router.py). At most
        ``routing.directory_timeout_s``; a no-op for ``pow2`` or with the table off."""
        router = request_router_for(self._engine.app_name, self._engine.deployment_name)
        place = getattr(router, "place", None)
        if place is None:  # pow2, or before the handle's first request made its router
            return
        try:
            await place(generation)
        except Exception:  # the table is an optimisation: route without its answer
            logger.exception("request %s: placement lookup failed", generation.request_id)

    async def _complete(self, record: RequestRecord, generation: GenerationRequest) -> GenerationResult:
        self._metrics.in_flight.inc()
        try:
            await self._place(generation)
            result = await self._complete_once(generation)
        except Exception as exc:
            if not retryable(exc):
                raise engine_failure(exc) from None
            logger.warning("request %s: engine call failed before any output (%s); retrying once",
                           generation.request_id, type(exc).__name__)
            try:
                result = await self._complete_once(dataclasses.replace(
                    generation, request_id=generation.request_id + "-retry"))
            except Exception as again:
                logger.warning("request %s: the retry failed too: %r", generation.request_id, again)
                raise engine_failure(again) from None
        finally:
            self._metrics.in_flight.dec()
        record.replica = result.replica_id
        record.prompt_tokens, record.completion_tokens = result.prompt_tokens, result.completion_tokens
        record.cached_tokens = result.cached_tokens
        if self._config.log_prompts and record.text is not None:
            record.text["completion"] = [c.text for c in result.choices]
        return result

    async def _complete_once(self, generation: GenerationRequest) -> GenerationResult:
        call = self._engine.complete.remote(generation)
        try:
            return await asyncio.wait_for(call, self._config.request_timeout_s)
        except asyncio.TimeoutError:
            call.cancel()  # out of Serve's queue, or aborted in vLLM
            raise _deadline_error("the whole request", self._config.request_timeout_s) from None

    async def _stream(self, record: RequestRecord, generation: GenerationRequest, encoder: StreamEncoder,
                      include_usage: bool, new_parser: Callable[[], Any] = lambda: None) -> Response:
        """Start the engine's generation and peek its first chunk to choose between an error
        status and a 200 stream. A failed engine (not a refusal) before the first chunk is
        retried once, under a new engine request id."""
        choices = generation.sampling.get("n", 1)
        await self._place(generation)
        for attempt in range(2):
            address = await self._receiver.start()
            call = self._engine.generate.remote(generation, address)
            stream = IncomingStream(self._receiver, generation.request_id, call, call.cancel, choices)
            try:
                first = await asyncio.wait_for(stream.__anext__(), self._config.first_token_timeout_s)
                break
            except StopAsyncIteration:
                stream.close()
                raise APIError(500, "The engine ended the stream without output.", "server_error") from None
            except asyncio.TimeoutError:
                stream.close()  # cancels the engine call: out of Serve's queue, or aborted in vLLM
                raise _deadline_error("waiting for the first token", self._config.first_token_timeout_s) from None
            except Exception as exc:
                if attempt == 1 or not retryable(exc):
                    stream.close()
                    if attempt == 1:
                        logger.warning("stream %s: the retry failed too: %r", generation.request_id, exc)
                    raise engine_failure(exc) from None
                logger.warning("stream %s: engine call failed before its first chunk (%s); retrying once",
                               generation.request_id, type(exc).__name__)
                await stream.call_settled(RETRY_SETTLE_S)
                stream.close()
                generation = dataclasses.replace(generation, request_id=generation.request_id + "-retry")
            except BaseException:  # the client gone: stop the engine's work
                stream.close()
                raise
        record.ttft_s = time.perf_counter() - record.start
        record.replica = first.replica_id
        self._metrics.ttft.observe(record.ttft_s)
        remaining = self._config.request_timeout_s - record.ttft_s
        relay = self._relay(record, stream, first, encoder, include_usage, new_parser, choices, remaining)
        # A response whose body is never iterated (the client left between the status line
        # and the body) never runs the relay's finally: release the stream when it is dropped.
        weakref.finalize(relay, self._abandon, record, stream)
        return StreamingResponse(
            relay,
            media_type="text/event-stream",
            headers={REPLICA_HEADER: first.replica_id, "cache-control": "no-cache"},
        )

    async def _relay(self, record: RequestRecord, chunks: IncomingStream, first: GenerationChunk,
                     encoder: StreamEncoder, include_usage: bool, new_parser: Callable[[], Any], choices: int,
                     remaining_s: float) -> AsyncIterator[bytes]:
        """Write the engine's chunks as SSE events (deployments.sse.events); count and clean up."""
        self._metrics.in_flight.inc()
        counts = StreamCounts(first.prompt_tokens, first.cached_tokens)
        # One timer per stream, not a timeout per chunk: past the deadline the stream's
        # reader gets a 504, the relay ends with an error event, and close() aborts the engine.
        timer = asyncio.get_running_loop().call_later(
            remaining_s, chunks.fail, _deadline_error("the whole request", self._config.request_timeout_s))
        try:
            async for event in events(first, chunks, encoder, counts, new_parser, choices, include_usage):
                yield event
        except (asyncio.CancelledError, GeneratorExit, RequestCancelledError):
            record.status = 499  # the client went away; the finally below stops the engine's work
            raise
        except Exception as exc:
            failure = engine_failure(exc)
            logger.warning("stream %s failed after it began: %s", encoder.request_id, exc)
            record.status, record.error_code = failure.status, failure.code or failure.type
            yield error_event(failure.message, failure.type, failure.code)
            yield DONE
        finally:
            timer.cancel()
            chunks.close()  # cancels the engine's generation if the stream did not finish
            self._metrics.in_flight.dec()
            record.prompt_tokens, record.completion_tokens = first.prompt_tokens, counts.completion_tokens
            record.cached_tokens = first.cached_tokens
            self._finish(record)
