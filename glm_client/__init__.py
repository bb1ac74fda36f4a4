"""glm_client: talk to GLM-4 models with the composite demo's API, in-process or over HTTP.

    from glm_client import Conversation, Role, get_client

    client = get_client("http://127.0.0.1:8000")                   # glm-serve
    client = get_client("/models/glm-4-9b-chat-hf", "vllm")         # in-process vLLM
    history = [Conversation(Role.USER, "北京天气如何？")]
    for response, chat_history in client.generate_stream(tools, history, max_new_tokens=256):
        ...

GLM-4's own format (prompt, tool system prompt, tool calls) lives in :mod:`chat_formats.glm4`,
shared with the server.
"""

from glm_client.client import Client, ClientType, get_client
from glm_client.conversation import Conversation, Role, build_system_prompt, process_input, process_response
from glm_client.http_client import APIStatusError, AsyncServeClient, GLMServeError, ServeClient, StreamError
from glm_client.vllm_client import VLLMClient

__all__ = [
    "APIStatusError", "AsyncServeClient", "Client", "ClientType", "Conversation", "GLMServeError", "Role",
    "ServeClient", "StreamError", "VLLMClient", "build_system_prompt", "get_client", "process_input",
    "process_response",
]
