"""A tool-calling loop with glm_client's ServeClient (the composite demo's API over HTTP).

    python examples/weather_tools_glm_client.py --base-url http://127.0.0.1:8000

Needs a GLM-4 model served with `chat_format: glm4` (config/serve.yaml). The model
either answers, or calls `get_weather`; we run the function, append the call and its
result to the history, and ask again, up to a few rounds.
"""

from __future__ import annotations

import argparse
import json

from glm_client import Conversation, Role, ServeClient

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]},
}


def get_weather(city: str) -> dict:
    """Stand-in for a real weather service."""
    return {"city": city, "sky": "sunny", "temperature_c": 24}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--question", default="What is the weather like in Beijing today?")
    parser.add_argument("--api-key", default=None, help="the service's API key, if it has keys")
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"],
                        help="'required' makes the first reply a call of get_weather")
    args = parser.parse_args()

    history = [Conversation(Role.USER, args.question)]
    with ServeClient(args.base_url, api_key=args.api_key) as client:
        for turn in range(4):
            response = None
            tool_choice = args.tool_choice if turn == 0 else "auto"
            for response, _chat_history in client.generate_stream([WEATHER_TOOL], history, max_new_tokens=256,
                                                                  tool_choice=tool_choice):
                if isinstance(response, str):
                    print(f"\rassistant: {response}", end="", flush=True)
            print()
            if not isinstance(response, dict):
                return  # a plain answer: done
            print(f"tool call: {response['name']}({response['parameters']})")
            result = get_weather(**response["parameters"])
            history.append(Conversation(Role.TOOL, json.dumps(response["parameters"]), metadata=response["name"]))
            history.append(Conversation(Role.OBSERVATION, json.dumps(result), metadata=response["name"]))


if __name__ == "__main__":
    main()
