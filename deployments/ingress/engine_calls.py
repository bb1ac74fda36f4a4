"""The hop to an engine replica: a whole completion, or a stream relayed as SSE events.

Both follow one retry policy: a request is sent to another replica only while no replica
has accepted it, which Serve's request router does itself (a full or dead replica refuses
it, and the next rank is tried). Once a replica has accepted it, a failure is the answer
(503 with Retry-After, the client may retry): a request that killed one replica, by
accident or on purpose, is never handed to the next one by glm-serve. Before the call the
deployment's request router may ask the shared placement table where the conversation
lives (:func:`deployments.routing.live_choosers.ask_placement_table`).

A stream: start the engine's generation and peek its first chunk, to choose between an
error status and a 200 stream; then relay the chunks as they arrive, with one timer for
the whole request. A failure after the first byte becomes an SSE error event and
``[DONE]``; the record is closed, once, when the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from starlette.responses import Response, StreamingResponse

from deployments.core.errors import APIError, EngineUnavailable, overloaded
from deployments.core.generation import GenerationChunk, GenerationRequest, GenerationResult
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import REPLICA_HEADER, IngressContext
from deployments.openai_api.sse import DONE, StreamCounts, StreamEncoder, error_event, events
from deployments.routing.live_choosers import ask_placement_table
from deployments.stream_channel import IncomingStream

logger = logging.getLogger("glm_serve.router")

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
    if isinstance(exc, ConnectionError):  # ChannelClosed, or the engine could not reach this router
        return APIError(503, "The engine replica's stream was lost; retry the request.", "service_unavailable")
    if isinstance(exc, (EngineUnavailable, RayActorError)):
        return APIError(503, "The engine replica failed; retry the request.", "service_unavailable")
    return APIError(500, f"Internal error in the engine: {type(exc).__name__}", "server_error")


def deadline_error(what: str, seconds: float) -> APIError:
    """504 for a request past one of its deadlines."""
    return APIError(504, f"The request timed out: {what} took more than {seconds:g} s.", "timeout_error",
                    code="timeout")


async def _place(ctx: IngressContext, generation: GenerationRequest) -> None:
    try:
        await ask_placement_table(ctx.engine.app_name, ctx.engine.deployment_name, generation)
    except Exception:  # the table is an optimisation: route without its answer
        logger.exception("request %s: placement lookup failed", generation.request_id)


async def complete(ctx: IngressContext, record: RequestRecord, generation: GenerationRequest) -> GenerationResult:
    """The whole completion of ``generation``; fills ``record`` with what it cost."""
    timeout_s = ctx.config.deadlines.request_timeout_s

    ctx.metrics.in_flight.inc()
    try:
        await _place(ctx, generation)
        call = ctx.engine.complete.remote(generation)
        try:
            result = await asyncio.wait_for(call, timeout_s)
        except asyncio.TimeoutError:
            call.cancel()  # out of Serve's queue, or aborted in vLLM
            raise deadline_error("the whole request", timeout_s) from None
        except Exception as exc:
            raise engine_failure(exc) from None
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
    first_timeout_s = ctx.config.deadlines.first_token_timeout_s

    await _place(ctx, generation)
    await ctx.receiver.start()
    incoming = IncomingStream(ctx.receiver, choices)
    call = ctx.engine.generate.remote(generation, incoming.reply_to)
    incoming.attach(call, call.cancel)
    try:
        first = await asyncio.wait_for(incoming.__anext__(), first_timeout_s)
    except StopAsyncIteration:
        incoming.close()
        raise APIError(500, "The engine ended the stream without output.", "server_error") from None
    except asyncio.TimeoutError:
        incoming.close()  # cancels the engine call: out of Serve's queue, or aborted in vLLM
        raise deadline_error("waiting for the first token", first_timeout_s) from None
    except Exception as exc:
        incoming.close()
        raise engine_failure(exc) from None
    except BaseException:  # the client gone: stop the engine's work
        incoming.close()
        raise
    record.ttft_s = time.perf_counter() - record.start
    record.replica = first.replica_id
    ctx.metrics.ttft.observe(record.ttft_s)
    remaining = ctx.config.deadlines.request_timeout_s - record.ttft_s
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
    """Write the engine's chunks as SSE events (deployments.openai_api.sse.events); count and clean up."""
    ctx.metrics.in_flight.inc()
    counts = StreamCounts(first.prompt_tokens, first.cached_tokens)
    # One timer per stream, not a timeout per chunk: past the deadline the stream's
    # reader gets a 504, the relay ends with an error event, and close() aborts the engine.
    timer = asyncio.get_running_loop().call_later(
        remaining_s, chunks.fail, deadline_error("the whole request", ctx.config.deadlines.request_timeout_s))
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
