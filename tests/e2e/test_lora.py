"""LoRA adapters on the tiny GLM-4 application: listed, called with the openai SDK and
glm_client, refused by name when unknown or broken (the engines serve on), served when
copied in while running, and routed to where they are loaded across both router replicas.

The tiny GLM's output does not depend on its input (tests/support/tiny_glm.py), so these
tests check serving, not what an adapter says: tests/e2e/test_lora_outputs.py compares
outputs with transformers + PEFT on SmolLM2.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid

import httpx
import openai
import pytest

from glm_client import Conversation, Role, ServeClient
from tests.support.e2e_cluster import (
    API_KEY,
    LORA_CONFIGURED,
    LORA_RANK,
    TINY_GLM_NAME,
    TINY_GLM_PREFIX,
    make_glm_adapter,
)
from tests.support.waiting import wait_until

REPLICA = "x-glm-serve-replica"


def _complete(http: httpx.Client, model: str, prompt: str | None = None) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": prompt or f"hello {uuid.uuid4().hex}",
                                              "max_tokens": 2})


def _adapter(server, name: str, rank: int = LORA_RANK, seed: int = 2) -> str:
    """Make adapter ``name`` beside the adapters folder, then move it in whole (a rename),
    as an operator's copy-then-rename does."""
    staging = server["adapters_dir"].parent / f"staging-{name}"
    if not (server["adapters_dir"] / name).exists():
        make_glm_adapter(server["tiny_glm_dir"], staging, rank=rank, seed=seed)
        staging.rename(server["adapters_dir"] / name)
    return name


def test_models_lists_each_adapter_with_the_base_model_as_parent(glm_openai, server):
    _adapter(server, "listed")
    models = {m.id: m for m in glm_openai.models.list().data}
    assert models[TINY_GLM_NAME].parent is None
    assert models[LORA_CONFIGURED].parent == TINY_GLM_NAME and models["listed"].parent == TINY_GLM_NAME


def test_an_adapter_is_called_by_its_name_with_the_openai_sdk_and_glm_client(glm_openai, base_url, glm_http):
    reply = glm_openai.chat.completions.create(model=LORA_CONFIGURED, max_tokens=4,
                                               messages=[{"role": "user", "content": "你好"}])
    assert reply.model == LORA_CONFIGURED and reply.choices[0].finish_reason == "stop"
    stream = glm_openai.chat.completions.create(model=LORA_CONFIGURED, max_tokens=4, stream=True,
                                                messages=[{"role": "user", "content": "你好"}])
    assert {chunk.model for chunk in stream} == {LORA_CONFIGURED}
    for client, kwargs in ((ServeClient(base_url + TINY_GLM_PREFIX, api_key=API_KEY, model=LORA_CONFIGURED), {}),
                           (ServeClient(base_url + TINY_GLM_PREFIX, api_key=API_KEY), {"model": LORA_CONFIGURED})):
        with client:
            items = list(client.generate_stream([], [Conversation(Role.USER, "你好")], max_new_tokens=4, **kwargs))
        assert items[-1][1][-1]["role"] == "assistant"

    wanted = [rf'glm_serve_adapter_requests_total\{{adapter="{LORA_CONFIGURED}",status="200"\}} [1-9]',
              rf'glm_serve_engine_adapter_loads_total\{{adapter="{LORA_CONFIGURED}",replica="[^"]+"\}} [1-9]',
              rf'glm_serve_engine_adapter_load_seconds_total\{{adapter="{LORA_CONFIGURED}",replica="[^"]+"\}} [0-9.e-]+[1-9]',
              r'glm_serve_engine_adapters_loaded\{replica="[^"]+"\} [1-9]']
    seen: set[str] = set()

    def all_seen() -> bool:  # each router replica counts its own requests: scrape until both are covered
        text = glm_http.get("/metrics").text
        seen.update(w for w in wanted if re.search(w, text))
        return len(seen) == len(wanted)
    wait_until(all_seen, timeout_s=20, what=f"per-adapter series: missing {set(wanted) - seen}")


@pytest.mark.parametrize("name", ["no-such-adapter", "..", "../adapters", "a/b", ".hidden", "x" * 200])
def test_an_unknown_or_unsafe_name_is_404_model_not_found(glm_http, name):
    response = _complete(glm_http, name)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"


def test_broken_adapters_are_refused_by_name_and_every_engine_serves_on(glm_http, server):
    adapters = server["adapters_dir"]
    broken = adapters / "broken"
    if not broken.exists():
        broken.mkdir()
        (broken / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"')  # cut short
        (broken / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    _adapter(server, "too-wide", rank=2 * LORA_RANK)  # above max_lora_rank
    for name in ("broken", "too-wide"):
        for _ in range(4):  # on either engine replica, and again once refused
            response = _complete(glm_http, name)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "adapter_load_failed" and error["param"] == "model"
            assert f"`{name}`" in error["message"] and str(adapters) not in error["message"]
    assert "rank" in _complete(glm_http, "too-wide").json()["error"]["message"]
    # both engines still serve the base model and a good adapter
    served = set()
    for _ in range(12):
        for model in (TINY_GLM_NAME, LORA_CONFIGURED):
            response = _complete(glm_http, model)
            assert response.status_code == 200, response.text
            served.add(response.headers[REPLICA])
    health = glm_http.get("/health").json()
    assert health.get("engine_replicas_running") == 2, health


def test_an_adapter_copied_in_while_running_is_served_without_a_restart(glm_openai, server):
    name = f"new-{uuid.uuid4().hex[:8]}"
    with pytest.raises(openai.NotFoundError):
        glm_openai.completions.create(model=name, prompt="hi", max_tokens=2)
    _adapter(server, name, seed=3)
    assert name in {m.id for m in glm_openai.models.list().data}
    assert glm_openai.completions.create(model=name, prompt="hi", max_tokens=2).model == name
    shutil.rmtree(server["adapters_dir"] / name)
    with pytest.raises(openai.NotFoundError):  # and one removed is gone at once
        glm_openai.completions.create(model=name, prompt="hi", max_tokens=2)


def test_an_adapters_requests_go_where_it_is_loaded_whichever_router_replica_takes_them(glm_http, server):
    """Requests of one adapter with no conversation to follow (unique prompts), through
    both router replicas (Serve's proxy picks one per request): one engine replica loads
    it, and every request goes there."""
    name = _adapter(server, f"sticky-{uuid.uuid4().hex[:8]}", seed=4)
    replicas = []
    for _ in range(16):
        response = _complete(glm_http, name)
        assert response.status_code == 200, response.text
        replicas.append(response.headers[REPLICA])
    assert len(set(replicas)) == 1, replicas

    def loads() -> float | None:
        text = glm_http.get("/metrics").text
        counts = re.findall(rf'glm_serve_engine_adapter_loads_total\{{adapter="{name}",replica="[^"]+"\}} ([0-9.]+)',
                            text)
        return sum(float(c) for c in counts) if counts else None
    assert wait_until(loads, timeout_s=20, what=f"loads of {name} in /metrics") == 1.0
    log = server["log"].read_text(errors="replace")
    assert json.dumps(name) in log  # the access log names the adapter
