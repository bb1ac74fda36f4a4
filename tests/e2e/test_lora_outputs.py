"""LoRA outputs are right: each adapter's greedy output through the engine glm-serve
configures (``model.lora``, and the vLLM plug-in deployments/engine/lora_fix.py) equals
transformers + PEFT's, token for token; base-model requests in the same batches are
unaffected. Three adapters of ranks 8, 16 and 32 on the embedded SmolLM2, with two slots,
so that slots are reused between batches."""

from __future__ import annotations

import asyncio
import gc

import pytest

from benchmarks.harness.lora_adapters import LLAMA_TARGETS, make_adapter
from deployments.config import ModelConfig
from tests.support.e2e_cluster import MODEL_DIR

TOKENS = 32
RANKS = (8, 16, 32)
PROMPTS = ("Tell me about the sea.",)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora-outputs")
    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return {f"r{rank}": make_adapter(MODEL_DIR, out / f"r{rank}", rank, seed=rank, targets=LLAMA_TARGETS, base=base)
            for rank in RANKS}


def _references(adapters, prompt_ids):
    """transformers + PEFT's greedy tokens for each adapter and the base model: the argmax
    of the logits, step by step, as vLLM's temperature 0 with ignore_eos. (``generate``
    would differ: its ``min_new_tokens`` forbids the eos token instead of ignoring it, and
    it applies the generation config's processors.)"""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    references = {}
    for name, path in [(None, None), *adapters.items()]:
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
        if path is not None:
            model = PeftModel.from_pretrained(model, path)
        model.eval()
        for i, ids in enumerate(prompt_ids):
            tokens = list(ids)
            with torch.no_grad():
                for _ in range(TOKENS):
                    logits = model(torch.tensor([tokens])).logits[0, -1]
                    tokens.append(int(torch.argmax(logits)))
            references[name, i] = tokens[len(ids):]
    return references


def test_adapter_and_base_outputs_equal_transformers_and_peft(adapters, monkeypatch):
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    prompt_ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False) for p in PROMPTS]
    references = _references(adapters, prompt_ids)
    outputs_differ = {tuple(references[name, 0]) for name in (None, *adapters)}
    assert len(outputs_differ) == len(RANKS) + 1, "each adapter must change the output, or the test proves nothing"

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    config = ModelConfig(model=str(MODEL_DIR), dtype="float32", max_model_len=1024, enforce_eager=True,
                         lora={"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 32})
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine_args()))
    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    requests = {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(adapters.items())}
    counter = iter(range(10_000))

    async def greedy(name, i):
        outputs = [output async for output in engine.generate(
            TokensPrompt(prompt_token_ids=prompt_ids[i]), params, f"req-{next(counter)}",
            lora_request=requests.get(name))]
        return list(outputs[-1].outputs[0].token_ids)

    async def run():
        for request in requests.values():
            await engine.add_lora(request)
        # batches mixing the base model with one, two and three adapters: two slots, so later
        # batches find earlier adapters in the slots (where the base-rows bug showed)
        mixes = [(None, "r8"), ("r8", None, "r16"), (None, "r32"), (None, "r8", "r16", "r32")]
        results = []
        for mix in mixes:
            for i in range(len(PROMPTS)):
                got = await asyncio.gather(*(greedy(name, i) for name in mix))
                results += [((name, i), tokens) for name, tokens in zip(mix, got)]
        return results

    try:
        results = asyncio.run(run())
    finally:
        engine.shutdown()
        engine = None  # collected now, while vLLM's modules are alive: its __del__ at exit fails noisily
        gc.collect()
    wrong = [(key, tokens, references[key]) for key, tokens in results if tokens != references[key]]
    assert not wrong, f"{len(wrong)} of {len(results)} outputs differ from transformers + PEFT: {wrong[:2]}"
