"""glm_client without a server: conversation conversion, SSE folding, retries, wrapped transport
errors (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
import warnings

import httpx
import pytest

import glm_client
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
    get_client,
    process_input,
)
from glm_client.conversation import build_system_prompt, to_openai
from glm_client.parameters import vllm_parameters

WEATHER = {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {}}}
HISTORY = [
    Conversation(Role.USER, "北京天气如何？"),
    Conversation(Role.TOOL, '{"city": "北京"}', metadata="get_weather"),
    Conversation(Role.OBSERVATION, '{"sky": "晴"}', metadata="get_weather"),
]


def test_process_input_and_to_openai():
    chat_history = process_input(HISTORY, [WEATHER])
    assert chat_history[0] == {"role": "system", "content": "", "tools": [{"type": "function", "function": WEATHER}]}
    assert chat_history[2] == {"role": "assistant", "content": '{"city": "北京"}', "metadata": "get_weather"}
    messages, tools = to_openai(chat_history)
    assert tools == [{"type": "function", "function": WEATHER}]
    assert messages[0] == {"role": "user", "content": "北京天气如何？"}
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert messages[2] == {"role": "tool", "tool_call_id": messages[1]["tool_calls"][0]["id"], "content": '{"sky": "晴"}'}


def test_role_strings_and_system_prompt():
    assert str(Role.TOOL) == "<|assistant|>" and str(Role.OBSERVATION) == "<|observation|>"
    prompt = build_system_prompt([], [WEATHER])
    assert "# 可用工具" in prompt and "## get_weather" in prompt and "当前日期" in prompt
    with pytest.raises(ValueError, match="python"):
        build_system_prompt(["python"], [])


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
    (response, history), = client.generate_stream([WEATHER], [Conversation(Role.USER, "天气")])
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


def test_vllm_parameters_renames_and_drops_with_one_warning_at_the_caller():
    demo = {"max_new_tokens": 8, "temperature": 0.5, "do_sample": True, "best_of": 1, "use_beam_search": False,
            "length_penalty": 1.0, "early_stopping": False}
    with pytest.warns(UserWarning) as record:
        assert vllm_parameters(demo) == {"max_tokens": 8, "temperature": 0.5}
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message).startswith(
        "ignoring ['best_of', 'do_sample', 'early_stopping', 'length_penalty', 'use_beam_search']")
    assert demo["max_new_tokens"] == 8  # the caller's dict is left alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vllm_parameters({"max_new_tokens": 4, "top_p": 0.8}) == {"max_tokens": 4, "top_p": 0.8}


def test_both_clients_send_the_same_requests_and_warn_at_the_caller():
    def responses():
        return [httpx.Response(200, json={"object": "list", "data": [{"id": "glm-4", "object": "model"}]}),
                httpx.Response(200, content=_sse(_chunk({"content": "ok"}, "stop")))]

    sent = {}
    for client_class in (ServeClient, AsyncServeClient):
        with pytest.warns(UserWarning, match="do_sample") as record:
            replies, sent[client_class] = _stream(client_class, responses(), [WEATHER], HISTORY,
                                                  options={"api_key": "k"}, max_new_tokens=8, temperature=0.5,
                                                  do_sample=True)
        assert replies == ["ok"] and record[0].filename == __file__

    def summary(requests):
        return [(r.method, str(r.url), r.headers.get("authorization"), r.content) for r in requests]

    assert summary(sent[ServeClient]) == summary(sent[AsyncServeClient])
    models, chat = sent[ServeClient]
    assert (models.url.path, chat.url.path, chat.headers["authorization"]) == \
        ("/v1/models", "/v1/chat/completions", "Bearer k")
    messages, tools = to_openai(process_input(HISTORY, [WEATHER]))
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


def test_get_client_picks_by_type():
    assert isinstance(get_client("http://glm", "serve"), ServeClient)
    with pytest.raises(ValueError, match="unknown client type"):
        get_client("x", "grpc")


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


def test_import_glm_client_imports_neither_vllm_nor_the_server_stack():
    code = ("import sys, glm_client, chat_formats, chat_formats.glm4; "
            "print(sorted(m for m in ('vllm', 'transformers', 'torch', 'ray', 'pydantic', 'starlette', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_vllm_client_is_loaded_on_first_use_and_names_the_extra_without_vllm(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))
    monkeypatch.delitem(vars(glm_client), "VLLMClient", raising=False)
    with pytest.raises(ImportError, match=r"VLLMClient needs vllm.*pip install 'glm-serve-client\[vllm\]'"):
        glm_client.VLLMClient  # noqa: B018
    with pytest.raises(ImportError, match=r"pip install 'glm-serve-client\[vllm\]'"):
        get_client("/models/glm-4-9b-chat-hf", "vllm")
    assert "VLLMClient" in dir(glm_client) and "VLLMClient" not in glm_client.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glm_client.nope  # noqa: B018


@pytest.mark.parametrize("client_class", [ServeClient, AsyncServeClient])
def test_both_clients_take_the_model_per_client_and_per_call(client_class):
    def answer():
        return httpx.Response(200, content=_sse(_chunk({"role": "assistant", "content": "ok"}, "stop")))

    _, seen = _stream(client_class, [answer()], options={"model": "sql-lora"})
    assert [json.loads(r.content)["model"] for r in seen] == ["sql-lora"]
    # per call, without asking /v1/models, and the client's own model stays for the next call
    _, seen = _stream(client_class, [answer()], model="chat-lora")
    assert [(r.url.path, json.loads(r.content)["model"]) for r in seen] == [("/v1/chat/completions", "chat-lora")]
