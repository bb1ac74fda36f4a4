"""The same tool-calling loop with the `openai` SDK: only `base_url` points at glm-serve.

    python examples/weather_tools_openai.py --base-url http://127.0.0.1:8000/v1 --model glm-4-9b-chat
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def get_weather(city: str) -> dict:
    """Stand-in for a real weather service."""
    return {"city": city, "sky": "sunny", "temperature_c": 24}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="glm-4-9b-chat")
    parser.add_argument("--question", default="What is the weather like in Beijing today?")
    parser.add_argument("--api-key", default=None, help="the service's API key, if it has keys")
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"],
                        help="'required' makes the first reply a call of get_weather")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key or "unused")
    messages = [{"role": "user", "content": args.question}]
    for turn in range(4):
        reply = client.chat.completions.create(model=args.model, messages=messages, tools=TOOLS, max_tokens=256,
                                               tool_choice=args.tool_choice if turn == 0 else "auto")
        message = reply.choices[0].message
        if not message.tool_calls:
            print(f"assistant: {message.content}")
            return
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments)
            print(f"tool call: {call.function.name}({arguments})")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(get_weather(**arguments))})


if __name__ == "__main__":
    main()
