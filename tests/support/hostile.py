"""Hostile request bodies: what broke parsers and encoders before (tests/unit/ingress/test_context.py
sends them through the router's input steps, tests/e2e/test_fuzz.py to the running service)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from deployments.openai_api.json_body import MAX_DEPTH

MODEL = "m"


def nested(depth: int, opener: str, model: str = MODEL) -> bytes:
    """A chat body whose metadata nests ``depth`` arrays or objects deep."""
    closer = "]" if opener == "[" else "}"
    inner = ('{"a":' * depth + "1" + "}" * depth) if opener == "{" else ("[" * depth + "1" + closer * depth)
    return ('{"model":"' + model + '","messages":[{"role":"user","content":"x"}],"metadata":' + inner + "}").encode()


HUGE_INT = "9" * 5000
LONE = "\\ud800"

def hostile_bodies(model: str = MODEL) -> st.SearchStrategy[bytes]:
    """Bodies of every hostile kind, for ``model`` (the served one, so that they get past the model check)."""
    m = model
    return st.one_of(
        st.builds(nested, st.integers(MAX_DEPTH - 2, 200_000), st.sampled_from(["[", "{"]), st.just(m)),
        st.sampled_from([
            f'{{"model":"{m}","messages":[{{"role":"user","content":"x"}}],"max_tokens":{HUGE_INT}}}'.encode(),
            f'{{"model":"{m}","prompt":"x","seed":-{HUGE_INT}}}'.encode(),
            f'{{"model":"{m}","prompt":[{HUGE_INT}]}}'.encode(),
            f'{{"model":"{m}","prompt":"x","logit_bias":{{"1":{HUGE_INT}}}}}'.encode(),
            f'{{"model":"{LONE}","prompt":"x"}}'.encode(),
            f'{{"model":"{m}","messages":[{{"role":"user","content":"a{LONE}b"}}]}}'.encode(),
            f'{{"model":"{m}","prompt":"x","{LONE}":1}}'.encode(),
            f'{{"model":"{m}","messages":[{{"role":"{LONE}","content":"x"}}]}}'.encode(),
            # a valid escaped pair, but not a token id
            ('{"model":"' + m + '","prompt":"x","logit_bias":{"\\ud83d\\ude00":1}}').encode(),
            ('{"model":"' + m + '","prompt":"x"').encode(),
            b"\xff\xfe{}",
            b"[]",
        ]),
        st.builds(lambda key: json.dumps({"model": m, "prompt": "x", "logit_bias": {key: 1}}).encode(),
                  st.sampled_from(["٣", "²", "-1", "+1", " 1", "1 ", "١٢", "0x1", "1e3", "99999999999"])),
        st.builds(lambda n: json.dumps({"model": m, "prompt": "x",
                                        "logit_bias": {str(i): 1 for i in range(n)}}).encode(), st.integers(301, 400)),
        st.binary(max_size=200),
    )
