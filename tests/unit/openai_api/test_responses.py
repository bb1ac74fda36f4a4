"""OpenAI response shapes (deployments/openai_api/responses.py)."""

from __future__ import annotations

from deployments.core.generation import Choice, TokenLogprob
from deployments.openai_api.responses import chat_choice, chat_completion, model_list, text_completion


def test_whole_responses_have_openai_shape():
    chat = chat_completion("id1", "m", [chat_choice(0, "hello", "stop")], 5, 2)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert chat["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    choices = [Choice("x", 1, "length"), Choice("yz", 2, "stop", [TokenLogprob("y", -1.0), TokenLogprob("z", -2.0)])]
    text = text_completion("id2", "m", choices, 1)
    assert text["choices"][0]["text"] == "x" and text["object"] == "text_completion"
    assert text["choices"][1]["logprobs"] == {"tokens": ["y", "z"], "token_logprobs": [-1.0, -2.0],
                                              "top_logprobs": [{}, {}], "text_offset": [0, 1]}
    assert text["usage"]["completion_tokens"] == 3
    models = model_list("m", 4096, 0)
    assert models["data"][0]["max_model_len"] == 4096
