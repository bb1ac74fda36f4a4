"""Which engine failures are retried, and how each maps to a status (deployments/ingress/engine_calls.py)."""

from __future__ import annotations

from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from deployments.core.errors import APIError, EngineUnavailable
from deployments.ingress.engine_calls import engine_failure
from deployments.stream_channel import ChannelClosed


def test_a_replica_that_failed_after_accepting_a_request_is_a_503_to_retry_not_a_second_replica():
    for failure in (ActorDiedError(), EngineUnavailable("dead"), ChannelClosed("x"), ConnectionResetError()):
        error = engine_failure(failure)
        assert error.status == 503 and error.headers()["retry-after"], failure
    assert engine_failure(APIError(400, "too long")).status == 400
    assert engine_failure(RuntimeError("bug")).status == 500


def test_engine_failures_map_to_statuses():
    assert engine_failure(BackPressureError(num_queued_requests=3, max_queued_requests=2)).status == 503
    assert engine_failure(ActorDiedError()).status == 503
    lost = engine_failure(ChannelClosed("the engine replica's stream connection closed"))
    assert (lost.status, lost.type) == (503, "service_unavailable")
    assert engine_failure(RuntimeError("boom")).status == 500
    assert engine_failure(RuntimeError("boom")).type == "server_error"


def _as_ray_raises_it(exc: Exception) -> Exception:
    """A replica's exception the way a caller of its handle sees it: pickled across the
    hop (Ray pickles the cause), then re-raised as a RayTaskError subclass of its class."""
    import pickle

    from ray.exceptions import RayTaskError

    cause = pickle.loads(pickle.dumps(exc))
    return RayTaskError("EngineDeployment.generate", "traceback", cause).as_instanceof_cause()


def test_engine_failures_are_told_apart_by_type_not_by_name():
    dead = engine_failure(_as_ray_raises_it(EngineUnavailable("vLLM core died")))
    assert (dead.status, dead.type) == (503, "service_unavailable")
    # A message that merely names a failure class is not that failure.
    assert engine_failure(RuntimeError("EngineDeadError ActorDiedError")).status == 500


def test_an_engine_refusal_crosses_ray_with_its_fields():
    refused = engine_failure(_as_ray_raises_it(APIError(400, "too long", param="messages",
                                                        code="context_length_exceeded")))
    assert (refused.status, refused.message, refused.param, refused.code) == (
        400, "too long", "messages", "context_length_exceeded")
    assert refused.body()["error"]["type"] == "invalid_request_error"
