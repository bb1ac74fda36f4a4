"""A request's prefix as cumulative block hashes (deployments/routing/prefix_keys.py): roles,
turns, tools and adapters change the keys; processes do not."""

from __future__ import annotations

import os
import subprocess
import sys

from deployments.core.generation import GenerationRequest
from deployments.routing.prefix_keys import prefix_keys
from tests.support.routing import adapter_request, chat, policy, turns


def test_roles_matter_and_a_next_turn_extends_the_previous_prefix():
    p = policy()
    as_user = p.keys(chat([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]))
    as_assistant = p.keys(chat([{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}]))
    assert as_user.hashes[0] == as_assistant.hashes[0]
    assert as_user.hashes[1] != as_assistant.hashes[1], "same text under another role is another prefix"
    assert as_user.anchors == (1,) and as_assistant.anchors == ()

    first, second = (p.keys(r) for r in turns(1, 2))
    assert second.hashes[: len(first.hashes)] == first.hashes
    assert len(second.hashes) == len(first.hashes) + 2

    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]}
    other_call = {**call, "tool_calls": [{"id": "1", "function": {"name": "g"}}]}
    assert p.keys(chat([call])).hashes != p.keys(chat([other_call])).hashes
    assert p.keys(chat([{**call, "name": None}])).hashes == p.keys(chat([call])).hashes, "null fields are no field"
    with_tools = GenerationRequest(request_id="t", messages=[{"role": "user", "content": "x"}], tools=[{"a": 1}])
    assert len(p.keys(with_tools).hashes) == 2 and p.keys(with_tools).anchors == (1,)


def test_keys_are_the_same_in_every_process_not_salted():
    """Python's hash() differs per process; the keys (and so rendezvous) must not."""
    code = ("from deployments.routing.prefix_policy import PrefixPolicy;from deployments.core.generation import GenerationRequest;"
            "print(PrefixPolicy().keys(GenerationRequest(request_id='x',messages=[{'role':'user','content':'hi'}]))"
            ".hashes[0])")
    here = policy().keys(chat([{"role": "user", "content": "hi"}])).hashes[0]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": root})
    assert int(out.stdout) == here


def test_prefix_keys_follow_the_tenants_cache_salt_as_vllms_cache_does():
    def keys(salt):
        request = adapter_request(None)
        request.cache_salt = salt
        return prefix_keys(request, 256, 64, 1).hashes

    unsalted, a, b = keys(None), keys("tenant:a"), keys("tenant:b")
    assert not set(unsalted) & set(a) and not set(a) & set(b), "one tenant's prefix routes apart from another's"
    assert keys("tenant:a") == a


def test_prefix_keys_are_salted_by_adapter_as_vllms_cache_is():
    base, sql, chat = (prefix_keys(adapter_request(a), 256, 64, 1).hashes for a in (None, "sql", "chat"))
    assert len(base) == len(sql) == len(chat) == 3
    assert not set(base) & set(sql) and not set(sql) & set(chat)
    assert prefix_keys(adapter_request("sql"), 256, 64, 1).hashes == sql
