"""The OpenAI-compatible API, driven by the real `openai` SDK and httpx against real engines."""

from __future__ import annotations

import concurrent.futures
import json

from tests.support.e2e_cluster import MAX_MODEL_LEN, MODEL_NAME

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_non_streaming_answers_the_question(openai_client, tokenizer):
    reply = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=24
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    # The stop token is not part of the text; everything else the model wrote is.
    written = tokenizer.encode(choice.message.content, add_special_tokens=False)
    assert reply.usage.completion_tokens in (len(written), len(written) + 1)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_matches_non_streaming_and_ends_with_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert "Paris" in text
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    whole = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=24)
    assert text == whole.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_usage_counts_every_token_with_ignore_eos(http):
    # Greedy: the model would end its answer after ~8 tokens; ignore_eos must run on to
    # max_tokens (the generation config's eos ids must not stop it either).
    body = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 40, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert payloads[-1]["usage"]["completion_tokens"] == 40
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    assert all(p["id"] == payloads[0]["id"] for p in payloads)


def test_stop_strings_and_sampling_fields_are_honoured(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"],
    )
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    sampled = [
        openai_client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, temperature=1.0, top_p=0.9, seed=7, max_tokens=12,
            presence_penalty=0.5, frequency_penalty=0.5, extra_body={"top_k": 20},
        ).choices[0].message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1], "the same seed must give the same sample"


def test_max_completion_tokens_limits_output(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Tell me a long story."}],
        max_completion_tokens=5,
    )
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_completions_stream_and_whole(openai_client):
    whole = openai_client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                             max_tokens=8, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage.completion_tokens <= 8
    streamed = openai_client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                                max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_completions_accepts_token_ids(http, tokenizer):
    ids = tokenizer.encode("The capital of France is")
    response = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": ids, "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == len(ids)


def test_models_lists_the_model_with_its_context_length(openai_client, http):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert http.get("/v1/models").json()["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_both_engine_replicas_serve_requests(http):
    body = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 16, "ignore_eos": True}

    def one(_):
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.headers["x-glm-serve-replica"]

    # Serve's router spreads load, not single requests: keep 16 in flight, a few rounds.
    replicas: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(4):
            replicas.update(pool.map(one, range(16)))
            if len(replicas) == 2:
                break
    assert len(replicas) == 2, replicas


def test_health_and_metrics(http):
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["engine_replicas_running"] == 2
    assert health.json()["engine_status"] == "HEALTHY"
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'glm_serve_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "glm_serve_time_to_first_token_seconds_bucket" in text
    assert "glm_serve_completion_tokens_total" in text
