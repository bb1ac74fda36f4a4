"""One stream as the router replica reads it: the engine's chunks, then the call's end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from deployments.core.generation import GenerationChunk
from deployments.stream_channel.receiver import StreamReceiver
from deployments.stream_channel.wire import ChannelClosed

LATE_CHUNK_TIMEOUT_S = 30.0
"""How long a stream waits for chunks still in flight after the engine's call returned."""


class IncomingStream:
    """One stream as the router sees it: chunks from the channel until the last one.

    Open it, give its :attr:`reply_to` to the engine call that produces the stream (a
    Serve ``DeploymentResponse`` of ``EngineDeployment.generate``), then :meth:`attach`
    that call and what cancels it. The call's outcome travels through the same queue as
    the chunks, so a failed call (a refusal, a dead replica, an overloaded deployment) is
    raised to the reader, even mid-stream. The call can return before its last frames
    arrive: it returns how many chunks it sent, and iteration ends when that many have come.
    """

    def __init__(self, receiver: StreamReceiver, choices: int = 1):
        self._receiver = receiver
        self.reply_to, self._queue = receiver.open()
        self._cancel: Callable[[], Any] | None = None
        self._call: asyncio.Future[Any] | None = None
        self._received = 0
        self._expected: int | None = None
        self._unfinished_choices = choices  # the stream is complete when each choice has finished

    def attach(self, call: Awaitable[Any], cancel: Callable[[], Any]) -> IncomingStream:
        """The engine call that streams to :attr:`reply_to`, and how to cancel it."""
        self._cancel = cancel
        self._call = asyncio.ensure_future(call)
        self._call.add_done_callback(self._call_ended)
        return self

    def _call_ended(self, call: asyncio.Future[Any]) -> None:
        if not call.cancelled():
            call.exception()  # retrieved here, so asyncio never logs it as unhandled
        self._queue.put_nowait(call)

    def __aiter__(self) -> IncomingStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._expected is not None and self._received >= self._expected:
                raise StopAsyncIteration
            if self._expected is None:
                item = await self._queue.get()
            else:
                try:
                    item = await asyncio.wait_for(self._queue.get(), LATE_CHUNK_TIMEOUT_S)
                except asyncio.TimeoutError:
                    raise ChannelClosed(
                        f"{self._expected - self._received} chunks sent by the engine never arrived") from None
            if isinstance(item, GenerationChunk):
                self._received += 1
                if item.finish_reason is not None:
                    self._unfinished_choices -= 1
                return item
            if isinstance(item, BaseException):
                raise item
            if item.cancelled():
                raise ChannelClosed("the engine call was cancelled")
            exc = item.exception()
            if exc is not None:
                raise exc
            self._expected = item.result()

    def fail(self, exc: BaseException) -> None:
        """Make the reader raise ``exc`` (a deadline, say) after the chunks already queued."""
        self._queue.put_nowait(exc)

    def close(self) -> None:
        """Stop: drop later chunks, and cancel the engine call unless the stream is complete."""
        self._receiver.close(self.reply_to)
        if self._unfinished_choices > 0 and self._call is not None and not self._call.done():
            self._cancel()
