"""Hostile bodies through the router's input steps (deployments/ingress/context.py), without Ray:
every one ends in a 4xx in OpenAI's shape that can be written to the client, never in an
exception that would be a 500; and the deadline on a body.

The strategies (tests/support/hostile.py) are the ones tests/e2e/test_fuzz.py sends to the
running service too: deep nesting, integers past Python's digit limit, Unicode digits and
signs where token ids go, lone UTF-16 surrogates in keys, names and content, and raw bytes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.config import IngressConfig
from deployments.core.errors import APIError
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext, error_response
from deployments.ingress.metrics import IngressMetrics
from deployments.openai_api.json_body import parse_object
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import ChatCompletionRequest, CompletionRequest
from tests.support.hostile import hostile_bodies
from tests.support.ingress import ingress_context

MODEL = "m"  # the model name tests/support/hostile.py uses


def _context() -> IngressContext:
    from chat_formats import get_chat_format
    from deployments.ingress.admission import Admission

    metrics = IngressMetrics()
    return IngressContext(engine=None, receiver=None, model_name=MODEL, chat_format=get_chat_format("template"),
                          config=IngressConfig(), metrics=metrics, admission=Admission(None, metrics),
                          default_max_tokens=512)


def _answer(body: bytes, route: type) -> int:
    """What the router's input steps make of ``body``: 200 if it passed them, else the error's
    status, after writing the error as the client would get it."""
    ctx = _context()
    record = RequestRecord(route="/v1/chat/completions", method="POST")
    try:
        data = parse_object(body)
        parsed = asyncio.run(ctx.validate(route, data, record))
        if route is CompletionRequest:
            check_limits(ctx.config.limits, None, prompt=parsed.prompt, max_tokens=parsed.max_tokens,
                         choices=parsed.n, default_max_tokens=ctx.default_max_tokens)
            parsed.sampling_kwargs()
        ctx.check_sampling(parsed, record)
    except APIError as error:
        response = error_response(error)  # renders the body now: it must be encodable
        assert json.loads(response.body)["error"]["message"]
        return error.status
    return 200


@settings(max_examples=400, deadline=None, derandomize=True)
@given(body=hostile_bodies(MODEL), route=st.sampled_from([ChatCompletionRequest, CompletionRequest]))
def test_hostile_bodies_get_a_4xx_that_can_be_written_never_an_exception(body, route):
    assert 400 <= _answer(body, route) < 500 or _answer(body, route) == 200


@pytest.mark.parametrize("key", ["٣", "²", "-1", "+1", "1e3", "99999999999"])
def test_logit_bias_keys_are_ascii_token_ids(key):
    assert _answer(json.dumps({"model": MODEL, "prompt": "x", "logit_bias": {key: 1}}).encode(),
                   CompletionRequest) == 400


def test_amplification_is_bounded():
    def completion(**fields) -> int:
        return _answer(json.dumps({"model": MODEL, "prompt": "x", **fields}).encode(), CompletionRequest)

    assert completion(logit_bias={str(i): 1 for i in range(300)}) == 200
    assert completion(logit_bias={str(i): 1 for i in range(301)}) == 400, "OpenAI's cap of 300"
    assert completion(n=16, max_tokens=2048) == 200
    assert completion(n=16, max_tokens=2049) == 400, "n x max_tokens past limits.max_total_tokens"
    assert completion(max_tokens=100_000) == 200, "one choice: the engine's context check names max_tokens"
    assert completion(ignore_eos=True) == 400, "ignore_eos needs router.allow_ignore_eos"


class _TrickledRequest:
    """A request whose body comes in one part and then never finishes."""

    headers: dict[str, str] = {}

    async def stream(self):
        yield b'{"model": '
        await asyncio.Event().wait()


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    ctx = ingress_context(body_timeout_s=0.2)

    async def main():
        start = time.monotonic()
        with pytest.raises(APIError) as error:
            await ctx.read_json(_TrickledRequest())
        assert error.value.status == 408 and error.value.code == "body_timeout"
        assert time.monotonic() - start < 1

    asyncio.run(main())


def test_a_prompt_is_reserved_at_admission_so_an_empty_bucket_cannot_take_long_prompts():
    from deployments.core.generation import GenerationRequest
    from deployments.ingress.context import prompt_bound

    chat = GenerationRequest("r", messages=[{"role": "user", "content": "x" * 5000}],
                             tools=[{"type": "function", "function": {"name": "f"}}])
    assert prompt_bound(chat) > 5000
    assert prompt_bound(GenerationRequest("r", prompt=[1, 2, 3])) == 3
    assert prompt_bound(GenerationRequest("r", prompt="hello")) == 5
