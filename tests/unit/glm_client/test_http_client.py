"""ServeClient and AsyncServeClient (glm_client/src/glm_client/http_client.py) against httpx's
MockTransport: streams, tool calls, retries, errors."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from glm_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncServeClient,
    Conversation,
    GLMServeError,
    Role,
    ServeClient,
    StreamError,
    process_input,
)
from glm_client.conversation import to_openai
from tests.support.conversations import HISTORY, WEATHER_FUNCTION


def _sse(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events) + \
        b"data: [DONE]\n\n"


def _chunk(delta, finish=None):
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _transport(responses, seen):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)
    return handler


def test_serve_client_streams_text_then_retries_503_with_retry_after():
    seen: list[httpx.Request] = []
    responses = [
        httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"message": "busy", "type": "x"}}),
        httpx.Response(200, content=_sse(_chunk({"role": "assistant", "content": "晴"}),
                                         _chunk({"content": "天"}, "stop"))),
    ]
    client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(responses, seen)))
    with pytest.warns(UserWarning, match="best_of"):
        items = list(client.generate_stream([], [Conversation(Role.USER, "hi")], max_new_tokens=8, best_of=1))
    assert [r for r, _ in items] == ["晴", "晴天"]
    assert items[-1][1][-1] == {"role": "assistant", "metadata": "", "content": "晴天"}
    body = json.loads(seen[-1].content)
    assert body["max_tokens"] == 8 and "best_of" not in body and body["stream"] is True
    assert len(seen) == 2


def test_serve_client_turns_a_tool_call_delta_into_the_demo_dict():
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    responses = [httpx.Response(200, content=_sse(_chunk({"role": "assistant", "content": None,
                                                          "tool_calls": [call]}, "tool_calls")))]
    client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(responses, [])))
    (response, history), = client.generate_stream([WEATHER_FUNCTION], [Conversation(Role.USER, "天气")])
    assert response == {"name": "get_weather", "parameters": {"city": "北京"}}
    assert history[-1] == {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'}


def test_serve_client_raises_openai_errors_and_stream_errors():
    bad = [httpx.Response(400, json={"error": {"message": "bad", "type": "invalid_request_error",
                                              "param": "messages", "code": None}})]
    client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(bad, [])))
    with pytest.raises(APIStatusError) as info:
        list(client.generate_stream([], [Conversation(Role.USER, "x")]))
    assert info.value.status == 400 and info.value.param == "messages"

    broken = [httpx.Response(200, content=b'data: {"error": {"message": "engine died"}}\n\n')]
    client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(broken, [])))
    with pytest.raises(StreamError, match="engine died"):
        list(client.generate_stream([], [Conversation(Role.USER, "x")]))


def _stream(client_class, responses, tools=(), history=(Conversation(Role.USER, "x"),), *, options=None,
            **parameters):
    """One generate_stream with ServeClient or AsyncServeClient: (the replies, the requests sent)."""
    seen: list[httpx.Request] = []
    client = client_class("http://glm", transport=httpx.MockTransport(_transport(responses, seen)), **(options or {}))
    if client_class is ServeClient:
        with client:
            return [r for r, _ in client.generate_stream(list(tools), list(history), **parameters)], seen

    async def run():
        async with client:
            return [r async for r, _ in client.generate_stream(list(tools), list(history), **parameters)]

    return asyncio.run(run()), seen


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_both_clients_retry_503_then_give_up_after_max_retries(client_class):
    busy = [httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"message": "busy"}}) for _ in range(4)]
    with pytest.raises(APIStatusError) as info:
        _stream(client_class, busy, options={"model": "m", "max_retries": 2})
    assert info.value.status == 503 and info.value.message == "busy"
    assert len(busy) == 1  # three requests: the first and two retries


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_both_clients_wait_as_a_429_says_then_retry(client_class):
    limited = httpx.Response(429, headers={"retry-after": "1", "retry-after-ms": "150"},
                             json={"error": {"message": "Rate limit reached", "type": "requests",
                                             "code": "rate_limit_exceeded"}})
    answer = httpx.Response(200, content=_sse(_chunk({"role": "assistant", "content": "ok"}, "stop")))
    started = time.monotonic()
    items, seen = _stream(client_class, [limited, answer], options={"model": "m"})
    waited = time.monotonic() - started
    assert items == ["ok"] and len(seen) == 2
    assert 0.15 <= waited < 0.9, "retry-after-ms, finer than Retry-After, is the one honoured"


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_both_clients_raise_when_the_model_list_fails(client_class):
    with pytest.raises(APIStatusError) as info:
        _stream(client_class, [httpx.Response(401, json={"error": {"message": "no key", "type": "auth"}})])
    assert info.value.status == 401 and info.value.type == "auth"


def test_both_clients_send_the_same_requests_and_warn_at_the_caller():
    def responses():
        return [httpx.Response(200, json={"object": "list", "data": [{"id": "glm-4", "object": "model"}]}),
                httpx.Response(200, content=_sse(_chunk({"content": "ok"}, "stop")))]

    sent = {}
    for client_class in (ServeClient, AsyncServeClient):
        with pytest.warns(UserWarning, match="do_sample") as record:
            replies, sent[client_class] = _stream(client_class, responses(), [WEATHER_FUNCTION], HISTORY,
                                                  options={"api_key": "k"}, max_new_tokens=8, temperature=0.5,
                                                  do_sample=True)
        assert replies == ["ok"] and record[0].filename == __file__

    def summary(requests):
        return [(r.method, str(r.url), r.headers.get("authorization"), r.content) for r in requests]

    assert summary(sent[ServeClient]) == summary(sent[AsyncServeClient])
    models, chat = sent[ServeClient]
    assert (models.url.path, chat.url.path, chat.headers["authorization"]) == \
        ("/v1/models", "/v1/chat/completions", "Bearer k")
    messages, tools = to_openai(process_input(HISTORY, [WEATHER_FUNCTION]))
    assert json.loads(chat.content) == {"model": "glm-4", "messages": messages, "tools": tools, "stream": True,
                                        "max_tokens": 8, "temperature": 0.5}


def test_async_client_matches_sync_client():
    def responses():
        return [httpx.Response(200, content=_sse(_chunk({"content": "a"}), _chunk({"content": "b"}, "stop")))]

    async def run():
        client = AsyncServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(responses(), [])))
        async with client:
            return [r async for r, _ in client.generate_stream([], [Conversation(Role.USER, "x")])]

    sync = ServeClient("http://glm", model="m", transport=httpx.MockTransport(_transport(responses(), [])))
    assert asyncio.run(run()) == [r for r, _ in sync.generate_stream([], [Conversation(Role.USER, "x")])] == ["a", "ab"]


def _broken_body(client_class, error):
    """A 200 stream that sends one event, then fails as httpx would mid-read."""
    first = _sse(_chunk({"content": "a"})).split(b"data: [DONE]")[0]
    if client_class is ServeClient:
        def body():
            yield first
            raise error
    else:
        async def body():
            yield first
            raise error
    return body()


def _collect(client_class, handler, replies, **options):
    """generate_stream into ``replies`` (kept when it raises) with a MockTransport ``handler``."""
    client = client_class("http://glm", transport=httpx.MockTransport(handler), **options)
    if client_class is ServeClient:
        with client:
            for response, _ in client.generate_stream([], [Conversation(Role.USER, "x")]):
                replies.append(response)
        return

    async def run():
        async with client:
            async for response, _ in client.generate_stream([], [Conversation(Role.USER, "x")]):
                replies.append(response)

    asyncio.run(run())


def _raise(error):
    def handler(request):
        raise error
    return handler


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
@pytest.mark.parametrize(("error_class", "wrapped"), [
    (httpx.ConnectError, APIConnectionError),
    (httpx.RemoteProtocolError, APIConnectionError),
    (httpx.ConnectTimeout, APITimeoutError),
    (httpx.ReadTimeout, APITimeoutError),
])
def test_both_clients_wrap_transport_errors_before_the_stream(client_class, error_class, wrapped):
    for options in ({"model": "m"}, {}):  # the chat request, and the model lookup before it
        error = error_class("no answer")
        replies: list = []
        with pytest.raises(wrapped) as info:
            _collect(client_class, _raise(error), replies, **options)
        assert info.value.__cause__ is error and isinstance(info.value, GLMServeError)
        assert type(error).__name__ in str(info.value)
        assert ("/v1/chat/completions" if options else "/v1/models") in str(info.value)
        assert replies == []
    if wrapped is APIConnectionError:
        assert not isinstance(info.value, APITimeoutError)


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
@pytest.mark.parametrize(("error_class", "wrapped"), [
    (httpx.ReadError, APIConnectionError),
    (httpx.RemoteProtocolError, APIConnectionError),
    (httpx.ReadTimeout, APITimeoutError),
])
def test_both_clients_wrap_transport_errors_in_the_middle_of_a_stream(client_class, error_class, wrapped):
    error = error_class("the connection broke")
    replies: list = []
    with pytest.raises(wrapped) as info:
        _collect(client_class, lambda request: httpx.Response(200, content=_broken_body(client_class, error)),
                 replies, model="m")
    assert info.value.__cause__ is error
    assert replies == ["a"]  # what came before the failure reached the caller


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_an_event_that_is_not_json_is_a_stream_error(client_class):
    with pytest.raises(StreamError, match="not a JSON event") as info:
        _collect(client_class, lambda request: httpx.Response(200, content=b"data: {oops\n\n"), [], model="m")
    assert isinstance(info.value.__cause__, ValueError)


def test_one_exception_tree():
    assert issubclass(APITimeoutError, APIConnectionError)
    for error in (APIConnectionError, APIStatusError, StreamError):
        assert error.__bases__ == (GLMServeError,)


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_both_clients_take_the_model_per_client_and_per_call(client_class):
    def answer():
        return httpx.Response(200, content=_sse(_chunk({"role": "assistant", "content": "ok"}, "stop")))

    _, seen = _stream(client_class, [answer()], options={"model": "sql-lora"})
    assert [json.loads(r.content)["model"] for r in seen] == ["sql-lora"]
    # per call, without asking /v1/models, and the client's own model stays for the next call
    _, seen = _stream(client_class, [answer()], model="chat-lora")
    assert [(r.url.path, json.loads(r.content)["model"]) for r in seen] == [("/v1/chat/completions", "chat-lora")]
