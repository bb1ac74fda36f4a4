"""glm_client against the real thing: ServeClient over HTTP, VLLMClient in-process."""

from __future__ import annotations

import asyncio

import pytest

from glm_client import AsyncServeClient, Conversation, Role, ServeClient, VLLMClient, get_client
from tests.support.e2e_cluster import API_KEY, TINY_GLM_PREFIX

WEATHER = {"name": "get_weather", "description": "城市天气",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
HISTORY = [
    Conversation(Role.USER, "北京天气如何？"),
    Conversation(Role.TOOL, '{"city": "北京"}', metadata="get_weather"),
    Conversation(Role.OBSERVATION, '{"sky": "晴"}', metadata="get_weather"),
]


def test_serve_client_streams_a_real_answer(base_url):
    with get_client(base_url) as client:
        items = list(client.generate_stream([], [Conversation(Role.USER, "What is the capital of France?")],
                                            max_new_tokens=24, temperature=0))
    assert len(items) > 1, "the answer should arrive in pieces"
    response, history = items[-1]
    assert "Paris" in response
    assert history[-1] == {"role": "assistant", "metadata": "", "content": response}
    texts = [r for r, _ in items]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), "each item extends the previous one"


def test_async_serve_client(base_url):
    async def run():
        async with AsyncServeClient(base_url) as client:
            return [r async for r, _ in client.generate_stream(
                [], [Conversation(Role.USER, "What is the capital of France?")], max_new_tokens=24, temperature=0)]

    assert "Paris" in asyncio.run(run())[-1]


@pytest.fixture(scope="module")
def vllm_client(server):
    client = VLLMClient(str(server["tiny_glm_dir"]), dtype="float32", max_model_len=8192, enforce_eager=True,
                        cpu_kvcache_space_gib=1)
    yield client
    client.close()


def test_serve_client_and_vllm_client_yield_the_same_items(base_url, vllm_client):
    with ServeClient(base_url + TINY_GLM_PREFIX, api_key=API_KEY) as serve_client:
        served = list(serve_client.generate_stream([WEATHER], HISTORY, max_new_tokens=16, temperature=0))
    local = list(vllm_client.generate_stream([WEATHER], HISTORY, max_new_tokens=16, temperature=0))
    # The rigged tiny model stops at once on a GLM-4 stop id: one empty reply from both.
    assert served == local
    assert [r for r, _ in local] == [""]
    assert local[0][1][0]["tools"][0]["function"]["name"] == "get_weather"


def test_vllm_client_serves_several_callers_at_once(vllm_client):
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return list(vllm_client.generate_stream([], [Conversation(Role.USER, "hi")], max_new_tokens=4,
                                                 temperature=0, best_of=1))

    with pytest.warns(UserWarning, match="best_of"), ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert all(r == results[0] for r in results)


def test_vllm_client_receives_the_same_forced_call(base_url, vllm_client):
    history = [Conversation(Role.USER, "北京天气如何？")]
    local = list(vllm_client.generate_stream([WEATHER], history, max_new_tokens=64, temperature=0,
                                             tool_choice="required"))
    with ServeClient(base_url + TINY_GLM_PREFIX, api_key=API_KEY) as client:
        served = list(client.generate_stream([WEATHER], history, max_new_tokens=64, temperature=0,
                                             tool_choice="required"))
    assert local[-1][0] == served[-1][0]
    assert local[-1][0]["name"] == "get_weather"
    assert set(local[-1][0]["parameters"]) == {"city"}


@pytest.mark.parametrize("script,args", [
    ("weather_tools_glm_client.py", ["--base-url", "{glm}", "--tool-choice", "required", "--api-key", API_KEY]),
    ("weather_tools_openai.py", ["--base-url", "{glm}/v1", "--model", "tiny-glm4", "--tool-choice", "required",
                                 "--api-key", API_KEY]),
])
def test_examples_run_against_a_glm4_service(base_url, script, args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    glm = base_url + TINY_GLM_PREFIX
    proc = subprocess.run([sys.executable, str(root / "examples" / script), *[a.format(glm=glm) for a in args]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The first turn is forced into a call, the tool answers, and the model replies.
    assert "tool call: get_weather" in proc.stdout and "assistant:" in proc.stdout
