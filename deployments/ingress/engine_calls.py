"""The hop to an engine replica: a whole completion, or a stream relayed as SSE events.

Both go through one retry policy (:func:`_with_one_retry`): a request whose engine call
failed before any output, because the replica or its engine died or its stream was lost,
is sent once more, under a new engine request id; a refusal, a deadline or a second
failure is final. Before each call the deployment's request router may ask the shared
placement table where the conversation lives (:func:`deployments.routing.choosers.
ask_placement_table`).

A stream: start the engine's generation and peek its first chunk, to choose between an
error status and a 200 stream; then relay the chunks as they arrive, with one timer for
the whole request. A failure after the first byte becomes an SSE error event and
``[DONE]``; the record is closed, once, when the stream ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from starlette.responses import Response, StreamingResponse

from deployments.access_log import RequestRecord
from deployments.errors import APIError, EngineUnavailable, overloaded
from deployments.generation import GenerationChunk, GenerationRequest, GenerationResult
from deployments.ingress.context import REPLICA_HEADER, IngressContext
from deployments.routing.choosers import ask_placement_table
from deployments.sse import DONE, StreamCounts, StreamEncoder, error_event, events
from deployments.stream_channel import ChannelClosed, IncomingStream

logger = logging.getLogger("glm_serve.router")

T = TypeVar("T")

RETRY_SETTLE_S = 10.0
"""Before retrying a stream whose connection was lost, wait this long at most for its
engine call to fail too, so that Serve knows the replica is dead and routes elsewhere."""


def engine_failure(exc: BaseException) -> APIError:
    """Map an exception from the engine hop to the answer a client should get.

    An :class:`APIError` (an engine's refusal) is its own answer; the rest are failures
    of the service, told apart by type (Ray re-raises a replica's exception as a
    subclass of its class)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackPressureError):
        return overloaded()
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


def deadline_error(what: str, seconds: float) -> APIError:
    """504 for a request past one of its deadlines."""
    return APIError(504, f"The request timed out: {what} took more than {seconds:g} s.", "timeout_error",
                    code="timeout")


async def _with_one_retry(generation: GenerationRequest,
                          attempt: Callable[[GenerationRequest, bool], Awaitable[T]]) -> T:
    """``attempt(generation, will_retry=True)``, and once more under a new request id when it
    failed in a :func:`retryable` way; any other failure, or a second one, as its
    :class:`APIError`."""
    try:
        return await attempt(generation, True)
    except Exception as exc:
        if not retryable(exc):
            raise engine_failure(exc) from None
        logger.warning("request %s: engine call failed before any output (%s); retrying once",
                       generation.request_id, type(exc).__name__)
    try:
        return await attempt(dataclasses.replace(generation, request_id=generation.request_id + "-retry"), False)
    except Exception as again:
        logger.warning("request %s: the retry failed too: %r", generation.request_id, again)
        raise engine_failure(again) from None


async def _place(ctx: IngressContext, generation: GenerationRequest) -> None:
    try:
        await ask_placement_table(ctx.engine.app_name, ctx.engine.deployment_name, generation)
    except Exception:  # the table is an optimisation: route without its answer
        logger.exception("request %s: placement lookup failed", generation.request_id)


async def complete(ctx: IngressContext, record: RequestRecord, generation: GenerationRequest) -> GenerationResult:
    """The whole completion of ``generation``; fills ``record`` with what it cost."""
    timeout_s = ctx.config.request_timeout_s

    async def attempt(g: GenerationRequest, will_retry: bool) -> GenerationResult:
        call = ctx.engine.complete.remote(g)
        try:
            return await asyncio.wait_for(call, timeout_s)
        except asyncio.TimeoutError:
            call.cancel()  # out of Serve's queue, or aborted in vLLM
            raise deadline_error("the whole request", timeout_s) from None

    ctx.metrics.in_flight.inc()
    try:
        await _place(ctx, generation)
        result = await _with_one_retry(generation, attempt)
    finally:
        ctx.metrics.in_flight.dec()
    record.replica = result.replica_id
    record.prompt_tokens, record.completion_tokens = result.prompt_tokens, result.completion_tokens
    record.cached_tokens = result.cached_tokens
    if ctx.config.log_prompts and record.text is not None:
        record.text["completion"] = [c.text for c in result.choices]
    return result


async def stream(ctx: IngressContext, record: RequestRecord, generation: GenerationRequest, encoder: StreamEncoder,
                 include_usage: bool, new_parser: Callable[[], Any] = lambda: None) -> Response:
    """A 200 event stream of ``generation``'s output once its first chunk exists, or the
    :class:`APIError` that came before it."""
    choices = generation.sampling.get("n", 1)
    first_timeout_s = ctx.config.first_token_timeout_s

    async def attempt(g: GenerationRequest, will_retry: bool) -> tuple[IncomingStream, GenerationChunk]:
        await ctx.receiver.start()
        incoming = IncomingStream(ctx.receiver, choices)
        call = ctx.engine.generate.remote(g, incoming.reply_to)
        incoming.attach(call, call.cancel)
        try:
            return incoming, await asyncio.wait_for(incoming.__anext__(), first_timeout_s)
        except StopAsyncIteration:
            incoming.close()
            raise APIError(500, "The engine ended the stream without output.", "server_error") from None
        except asyncio.TimeoutError:
            incoming.close()  # cancels the engine call: out of Serve's queue, or aborted in vLLM
            raise deadline_error("waiting for the first token", first_timeout_s) from None
        except Exception as exc:
            if will_retry and retryable(exc):  # let Serve learn the replica is gone before the retry
                await incoming.call_settled(RETRY_SETTLE_S)
            incoming.close()
            raise
        except BaseException:  # the client gone: stop the engine's work
            incoming.close()
            raise

    await _place(ctx, generation)
    incoming, first = await _with_one_retry(generation, attempt)
    record.ttft_s = time.perf_counter() - record.start
    record.replica = first.replica_id
    ctx.metrics.ttft.observe(record.ttft_s)
    remaining = ctx.config.request_timeout_s - record.ttft_s
    relay = _relay(ctx, record, incoming, first, encoder, include_usage, new_parser, choices, remaining)
    # A response whose body is never iterated (the client left between the status line
    # and the body) never runs the relay's finally: release the stream when it is dropped.
    weakref.finalize(relay, _abandon, ctx, record, incoming)
    return StreamingResponse(
        relay,
        media_type="text/event-stream",
        headers={REPLICA_HEADER: first.replica_id, "cache-control": "no-cache"},
    )


def _abandon(ctx: IngressContext, record: RequestRecord, incoming: IncomingStream) -> None:
    if not record.finished:
        incoming.close()
        record.status = 499
        ctx.admission.finish(record)


async def _relay(ctx: IngressContext, record: RequestRecord, chunks: IncomingStream, first: GenerationChunk,
                 encoder: StreamEncoder, include_usage: bool, new_parser: Callable[[], Any], choices: int,
                 remaining_s: float) -> AsyncIterator[bytes]:
    """Write the engine's chunks as SSE events (deployments.sse.events); count and clean up."""
    ctx.metrics.in_flight.inc()
    counts = StreamCounts(first.prompt_tokens, first.cached_tokens)
    # One timer per stream, not a timeout per chunk: past the deadline the stream's
    # reader gets a 504, the relay ends with an error event, and close() aborts the engine.
    timer = asyncio.get_running_loop().call_later(
        remaining_s, chunks.fail, deadline_error("the whole request", ctx.config.request_timeout_s))
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
        ctx.metrics.in_flight.dec()
        record.prompt_tokens, record.completion_tokens = first.prompt_tokens, counts.completion_tokens
        record.cached_tokens = first.cached_tokens
        ctx.admission.finish(record)
