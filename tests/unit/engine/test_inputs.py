"""A request's input to the engine (deployments/engine/inputs.py): which requests are rendered
beside the event loop, and grammars built off it."""

from __future__ import annotations

import pytest

from deployments.core.errors import APIError
from deployments.core.generation import GenerationRequest
from deployments.engine.inputs import INLINE_RENDER_MAX_SIZE, render_size


def _chat(*contents: str, **fields) -> GenerationRequest:
    return GenerationRequest("r", messages=[{"role": "user", "content": c} for c in contents], **fields)


def test_a_chat_sized_request_renders_inline():
    assert render_size(_chat("What is the capital of France?")) <= INLINE_RENDER_MAX_SIZE
    assert render_size(GenerationRequest("r", prompt="Once upon a time")) <= INLINE_RENDER_MAX_SIZE
    assert render_size(GenerationRequest("r", prompt=[1, 2, 3])) == 3


@pytest.mark.parametrize("request_", [
    _chat("x" * (INLINE_RENDER_MAX_SIZE + 1)),  # one long message
    _chat(*["hi"] * 1000),  # many short ones: the template renders each
    _chat("hi", tools=[{"type": "function", "function": {"name": "f", "description": "d" * 20000}}]),
    GenerationRequest("r", messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{" + "1" * 20000 + "}"}}]}]),
    GenerationRequest("r", prompt="x" * (INLINE_RENDER_MAX_SIZE + 1)),
    GenerationRequest("r", prompt=list(range(INLINE_RENDER_MAX_SIZE + 1))),  # each id is checked against the vocabulary
], ids=["long-message", "many-messages", "large-tools", "large-tool-call", "long-prompt", "many-token-ids"])
def test_a_large_request_renders_in_the_render_thread(request_):
    assert render_size(request_) > INLINE_RENDER_MAX_SIZE


def test_a_forced_tool_calls_grammar_builds_off_the_event_loop_within_its_timeout(monkeypatch):
    import asyncio
    import time

    from chat_formats import ChatFormat
    from deployments.engine import inputs as engine_input
    from deployments.engine.inputs import RequestInput

    class SlowGrammar(ChatFormat):
        name = "slow-grammar"
        supports_tools = True

        def tool_call_grammar(self, tools, name=None):
            time.sleep(0.5)  # a schema that takes long to compile
            return "root ::= \"x\""

    class Tokenizer:
        def encode(self, text, add_special_tokens=True):
            return [1]

    monkeypatch.setattr(engine_input, "GRAMMAR_TIMEOUT_S", 0.2)
    request_input = RequestInput(SlowGrammar(), Tokenizer())
    forced = GenerationRequest("r", messages=[{"role": "user", "content": "x"}], tools=[{"function": {"name": "f"}}],
                               force_tool_call=True)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        with pytest.raises(APIError) as error:
            await request_input.structured(forced)
        task.cancel()
        assert error.value.status == 400 and error.value.param == "tools"
        assert ticks >= 10, "the event loop kept running while the grammar was built"
        assert await request_input.structured(GenerationRequest("r", prompt="x", structured={"json_object": True})) \
            == {"json_object": True}

    asyncio.run(main())
    request_input.shutdown()
