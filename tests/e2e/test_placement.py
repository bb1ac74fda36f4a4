"""One engine replica per GPU, tested with GPUs the cluster declares but does not have."""

from __future__ import annotations

import concurrent.futures


def test_each_engine_replica_holds_its_own_gpu(http):
    seen: dict[str, list[str]] = {}

    def probe(_):
        health = http.get("/health")
        assert health.status_code == 200
        return health.headers["x-glm-serve-replica"], health.json()["gpu_ids"]

    # Concurrent probes: Serve's router sends sequential ones on an idle cluster to
    # whichever replica it likes; only load spreads them.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            seen.update(pool.map(probe, range(16)))
            if len(seen) == 2:
                break
    assert len(seen) == 2, f"only saw replicas {seen}"
    gpus = [tuple(ids) for ids in seen.values()]
    assert all(len(ids) == 1 for ids in gpus), gpus
    assert gpus[0] != gpus[1], f"two engine replicas share a GPU: {seen}"
