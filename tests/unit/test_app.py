"""The app builder (deployments/app.py): what `serve run` deploys from a config's ``args``."""

from __future__ import annotations

from deployments.config import AppConfig


def test_the_router_warms_its_engine_handle_unless_the_engines_may_scale_to_zero():
    from deployments.app import build_app

    def app(engine: dict) -> tuple[bool, object]:
        args = {"model": {"model": "m"}, "engine": engine}
        bound = build_app(args)._bound_deployment  # what serve run deploys: the router and its init args
        return AppConfig.model_validate(args).engine.may_scale_to_zero, bound.init_kwargs["warm_engine"]

    assert app({}) == (False, True)
    assert app({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}}) == (False, True), \
        "Serve's min_replicas defaults to 1"
    assert app({"num_replicas": "auto", "autoscaling_config": {"min_replicas": 0, "max_replicas": 4}}) == (True, False)


def test_serves_proxy_refuses_past_the_routers_bounds_with_retry_after():
    from deployments.app import build_app

    deployment = build_app({"model": {"model": "m"}})._bound_deployment  # the router, as serve run deploys it
    assert deployment.backpressure_config.status_code == 503
    assert deployment.backpressure_config.retry_after_s == 1
