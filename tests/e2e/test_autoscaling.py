"""Serve's autoscaling of engine replicas (the "autoscale" app of the test config: 1 to 2
engine replicas, target 2 ongoing requests each, short delays)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx

from tests.support.e2e_cluster import AUTOSCALE_MAX_MODEL_LEN, AUTOSCALE_PREFIX, MODEL_NAME

LONG_TOKENS = AUTOSCALE_MAX_MODEL_LEN - 64


def _running(client: httpx.Client) -> int:
    return client.get(f"{AUTOSCALE_PREFIX}/health").json().get("engine_replicas_running", 0)


def _stream(client: httpx.Client, max_tokens: int) -> tuple[int, str | None, str]:
    """(completion tokens, replica, error) of one streamed request that must end with [DONE]."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens, done, error = 0, False, ""
    with client.stream("POST", f"{AUTOSCALE_PREFIX}/v1/chat/completions", json=body, timeout=300) as response:
        if response.status_code != 200:
            return 0, None, f"HTTP {response.status_code}: {response.read()[:200]!r}"
        replica = response.headers.get("x-glm-serve-replica")
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    error = str(event["error"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    return tokens, replica, error or ("" if done else "no [DONE]")


def test_engines_scale_out_under_load_and_in_when_idle_letting_streams_finish(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert _running(client) == 1, "the app starts at min_replicas"
        stop = threading.Event()
        results: list[tuple[int, str | None, str]] = []

        def user() -> None:
            while not stop.is_set():
                results.append(_stream(client, 48))

        # 6 users keep 6 requests in flight: 3 per replica at 1 replica, over the target of 2.
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            try:
                for _ in range(6):
                    pool.submit(user)
                while _running(client) < 2:
                    assert time.monotonic() - started < 240, "Serve did not add an engine replica under load"
                    time.sleep(1)
                scaled_out_s = time.monotonic() - started
                # Both replicas serve before the load stops.
                seen_after = len(results)
                while len({r for _, r, _ in results[seen_after:]}) < 2 and time.monotonic() - started < 300:
                    time.sleep(0.5)
            finally:
                stop.set()  # also on a failed assertion: the pool waits for its users to stop
        failed = [r for r in results if r[2] or r[0] != 48]
        assert not failed, f"{len(failed)} of {len(results)} requests failed while scaling out: {failed[:3]}"
        assert len({r for _, r, _ in results[seen_after:]}) == 2, "the new replica took requests"

        # Two long streams (one per replica, likely) run while the load is below target:
        # Serve removes a replica within seconds, and the one it removes finishes its stream.
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            long_streams = [pool.submit(_stream, client, LONG_TOKENS) for _ in range(2)]
            while _running(client) > 1:
                assert time.monotonic() - started < 180, "Serve did not remove the idle engine replica"
                time.sleep(1)
            scaled_in_s = time.monotonic() - started
            finished = [f.result() for f in long_streams]
        assert all(not error and tokens == LONG_TOKENS for tokens, _, error in finished), finished
        print(f"\nscaled out after {scaled_out_s:.0f} s under load ({len(results)} requests, 0 failed); "
              f"back to 1 replica {scaled_in_s:.0f} s after; streams across the scale-in: "
              f"{[(t, r) for t, r, _ in finished]}")
