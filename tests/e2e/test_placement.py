"""One engine replica per GPU, tested with GPUs the cluster declares but does not have."""

from __future__ import annotations


def test_each_engine_replica_holds_its_own_gpu(http):
    seen: dict[str, list[str]] = {}
    for _ in range(60):
        health = http.get("/health")
        assert health.status_code == 200
        seen[health.headers["x-glm-serve-replica"]] = health.json()["gpu_ids"]
        if len(seen) == 2:
            break
    assert len(seen) == 2, f"only saw replicas {seen}"
    gpus = [tuple(ids) for ids in seen.values()]
    assert all(len(ids) == 1 for ids in gpus), gpus
    assert gpus[0] != gpus[1], f"two engine replicas share a GPU: {seen}"
