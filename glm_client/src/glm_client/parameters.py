"""The demo's sampling keyword arguments, as vLLM takes them: in-process (``SamplingParams``)
and over HTTP (the OpenAI API's request fields), which name them alike.

An app written for the composite demo passes ``max_new_tokens`` and fields that older vLLM
(``best_of``, ``use_beam_search``, ``length_penalty``, ``early_stopping``) or HF ``generate``
(``do_sample``) took; it runs unchanged here, and is told what was ignored.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["RENAMED", "DROPPED", "vllm_parameters"]

RENAMED = {"max_new_tokens": "max_tokens"}
DROPPED = frozenset({"best_of", "use_beam_search", "length_penalty", "early_stopping", "do_sample"})


def vllm_parameters(parameters: dict[str, Any], stacklevel: int = 1) -> dict[str, Any]:
    """``parameters`` with the demo's names renamed and the fields vLLM lacks dropped, with
    one warning naming them (``do_sample=False`` no longer means greedy: pass ``temperature=0``).

    ``stacklevel`` is as for :func:`warnings.warn`, counted from the caller: 1 points the
    warning at the caller's line; a client passes more, so that it points at the app's.
    """
    dropped = sorted(DROPPED & parameters.keys())
    if dropped:
        warnings.warn(f"ignoring {dropped}: vLLM has no such sampling fields", stacklevel=stacklevel + 1)
    return {RENAMED.get(key, key): value for key, value in parameters.items() if key not in DROPPED}
