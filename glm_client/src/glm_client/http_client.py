"""The composite demo's ``Client`` API over HTTP, against glm-serve (or any OpenAI-compatible
server that speaks GLM-4 tool calls).

    client = ServeClient("http://127.0.0.1:8000")
    for response, history in client.generate_stream(tools, history, max_new_tokens=256):
        ...   # response: the text so far, or {"name": ..., "parameters": {...}} for a tool call

:class:`AsyncServeClient` is the same for asyncio code. Both retry a request that the
service answers with 503 (overloaded, or no healthy engine) or 429 (past one of the
caller's rate limits), waiting as its ``retry-after-ms`` or ``Retry-After`` header says,
or with exponential backoff; a stream that has begun is never retried.

Exceptions: what went wrong with the service, or with the connection to it, is one of
these; httpx's transport errors never reach the caller (they are chained as ``__cause__``).
Wrong arguments are Python's usual ``ValueError`` and ``TypeError``::

    GLMServeError                  base: catch this to catch any of them
    ├── APIConnectionError         no answer: could not connect, or the connection broke, before or
    │   │                          during a stream (wraps httpx.TransportError)
    │   └── APITimeoutError        no answer within ``timeout`` (wraps httpx.TimeoutException)
    ├── APIStatusError             the service answered with an OpenAI error (status, type, param, code)
    └── StreamError                the service reported an error in the middle of a stream, or sent
                                   an event that is not JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from glm_client.conversation import Conversation, process_input, process_response, to_openai
from glm_client.parameters import vllm_parameters

__all__ = ["ServeClient", "AsyncServeClient", "GLMServeError", "APIConnectionError", "APITimeoutError",
           "APIStatusError", "StreamError"]


class GLMServeError(Exception):
    """Base of every error from the service or the connection to it (the module's docstring
    draws the tree)."""


class APIConnectionError(GLMServeError):
    """No answer: httpx could not connect, send or read (its error is ``__cause__``). Raised
    before a stream began or in the middle of one."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's ``timeout`` (connect, write, read or pool)."""


class APIStatusError(GLMServeError):
    """An HTTP error answer, with OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


class StreamError(GLMServeError):
    """An SSE error event, or an event that is not JSON: the stream began, then failed."""


@contextlib.contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """Raise httpx's transport errors inside the block as this client's own, chained.

    A plain context manager serves the async client too: it only catches what the block
    raises, whether the block awaits or not.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"{what}: timed out ({type(exc).__name__}: {exc})") from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _status_error(response: httpx.Response, body: bytes) -> APIStatusError:
    try:
        error = json.loads(body)["error"]
        return APIStatusError(response.status_code, error.get("message", ""), error.get("type"),
                              error.get("param"), error.get("code"))
    except (ValueError, KeyError, TypeError):
        return APIStatusError(response.status_code, body.decode(errors="replace")[:500])


def _retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    if response is not None:  # OpenAI's retry-after-ms first: finer than whole seconds
        for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = response.headers.get(header)
            if value:
                try:
                    return min(max(0.0, float(value) * scale), 60.0)
                except ValueError:
                    pass
    return backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)


class _StreamState:
    """Folds SSE events into the demo's ``(response, history)`` items."""

    def __init__(self, chat_history: list[dict[str, Any]]):
        self.chat_history = chat_history
        self.text = ""
        self.yielded = False

    def feed(self, line: str) -> tuple[Any, list[dict[str, Any]]] | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            return None
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise StreamError(f"not a JSON event: {payload[:200]!r}") from exc
        if "error" in event:
            raise StreamError(event["error"].get("message", "stream failed"))
        if not event.get("choices"):
            return None
        choice = event["choices"][0]
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            function = delta["tool_calls"][0]["function"]
            self.text = f"{function['name']}\n{function.get('arguments') or '{}'}"
        elif delta.get("content"):
            self.text += delta["content"]
        elif choice.get("finish_reason") is None or self.yielded:
            return None
        # One item per new text, and always one for a reply, even an empty one
        # (as VLLMClient does).
        self.yielded = True
        return process_response(self.text, self.chat_history)


class _ServeClientBase:
    """What :class:`ServeClient` and :class:`AsyncServeClient` share: their settings, the
    request they send and what they make of each answer. Nothing here does I/O; the
    subclasses only send, read and sleep, each in its own way."""

    def __init__(self, http_class: type[httpx.Client] | type[httpx.AsyncClient], base_url: str,
                 api_key: str | None, model: str | None, timeout: float, max_retries: int, backoff_s: float,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_class(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                transport=transport)
        self._model = model
        self._chat_url = f"POST {self._http.base_url}/v1/chat/completions"
        self._max_retries = max_retries
        self._backoff_s = backoff_s

    def _take_model(self, response: httpx.Response) -> str:
        """Keep the first model that ``GET /v1/models`` lists."""
        if response.status_code != 200:
            raise _status_error(response, response.content)
        self._model = response.json()["data"][0]["id"]
        return self._model

    @staticmethod
    def _chat_body(model: str, tools: list[dict[str, Any]], history: list[Conversation],
                   parameters: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The chat completion request, and the GLM-4 history that the stream's items extend."""
        chat_history = process_input(history, tools)
        messages, openai_tools = to_openai(chat_history)
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if openai_tools:
            body["tools"] = openai_tools
        # Warn at the app's line: here <- generate_stream <- the app.
        body.update(vllm_parameters(parameters, stacklevel=3))
        return body, chat_history

    def _retry_after(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending the request again, or None to take this answer.

        Only a 503 (the service is overloaded, or has no healthy engine) and a 429 (a rate
        limit of the caller's tenant) are retried: the request did not start, so sending it
        again is safe.
        """
        if response.status_code in (429, 503) and attempt < self._max_retries:
            return _retry_delay(response, attempt, self._backoff_s)
        return None


class ServeClient(_ServeClientBase):
    """The demo's ``Client`` protocol over HTTP (synchronous)."""

    _http: httpx.Client

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(httpx.Client, base_url, api_key, model, timeout, max_retries, backoff_s, transport)

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def model(self) -> str:
        """The model to ask for: the one given, else the first the service lists."""
        if self._model is None:
            with _transport_errors(f"GET {self._http.base_url}/v1/models"):
                return self._take_model(self._http.get("/v1/models"))
        return self._model

    def generate_stream(self, tools: list[dict[str, Any]], history: list[Conversation], **parameters: Any
                        ) -> Iterator[tuple[str | dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(response, history)`` as the model writes, like the demo's VLLMClient.
        ``model=`` picks the model (a LoRA adapter's name, say) for this call only."""
        model = parameters.pop("model", None) or self.model
        body, chat_history = self._chat_body(model, tools, history, parameters)
        state = _StreamState(chat_history)
        for attempt in range(self._max_retries + 1):
            with _transport_errors(self._chat_url):
                with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if (delay := self._retry_after(response, attempt)) is not None:
                        time.sleep(delay)
                        continue
                    if response.status_code != 200:
                        raise _status_error(response, response.read())
                    for line in response.iter_lines():
                        if (item := state.feed(line)) is not None:
                            yield item
                    return


class AsyncServeClient(_ServeClientBase):
    """The demo's ``Client`` protocol over HTTP for asyncio code."""

    _http: httpx.AsyncClient

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(httpx.AsyncClient, base_url, api_key, model, timeout, max_retries, backoff_s, transport)

    async def __aenter__(self) -> AsyncServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_model(self) -> str:
        """The model to ask for: the one given, else the first the service lists."""
        if self._model is None:
            with _transport_errors(f"GET {self._http.base_url}/v1/models"):
                return self._take_model(await self._http.get("/v1/models"))
        return self._model

    async def generate_stream(self, tools: list[dict[str, Any]], history: list[Conversation], **parameters: Any
                              ) -> AsyncIterator[tuple[str | dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(response, history)`` as the model writes. ``model=`` picks the model (a
        LoRA adapter's name, say) for this call only."""
        model = parameters.pop("model", None) or await self.get_model()
        body, chat_history = self._chat_body(model, tools, history, parameters)
        state = _StreamState(chat_history)
        for attempt in range(self._max_retries + 1):
            with _transport_errors(self._chat_url):
                async with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if (delay := self._retry_after(response, attempt)) is not None:
                        await asyncio.sleep(delay)
                        continue
                    if response.status_code != 200:
                        raise _status_error(response, await response.aread())
                    async for line in response.aiter_lines():
                        if (item := state.feed(line)) is not None:
                            yield item
                    return
