"""One engine replica per GPU, tested with GPUs the cluster declares but does not have."""

from __future__ import annotations

import asyncio


def test_each_engine_replica_holds_its_own_gpu(server):
    import ray
    from ray import serve

    ray.init(address=server["ray_address"], namespace="serve", log_to_driver=False)
    try:
        engine = serve.get_deployment_handle("GLMEngine", app_name="glm")

        async def probe() -> dict[str, list[str]]:
            # Concurrent calls: Serve's router sends sequential ones on an idle cluster to
            # whichever replica it likes; only load spreads them.
            seen: dict[str, list[str]] = {}
            for _ in range(10):
                infos = await asyncio.gather(*[engine.model_info.remote() for _ in range(16)])
                seen.update({info["replica_id"]: info["gpu_ids"] for info in infos})
                if len(seen) == 2:
                    break
            return seen

        seen = asyncio.run(probe())
    finally:
        ray.shutdown()
    assert len(seen) == 2, f"only saw replicas {seen}"
    gpus = [tuple(ids) for ids in seen.values()]
    assert all(len(ids) == 1 for ids in gpus), gpus
    assert gpus[0] != gpus[1], f"two engine replicas share a GPU: {seen}"
