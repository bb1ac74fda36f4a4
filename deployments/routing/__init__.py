"""Which engine replica serves a request: one package, one job per module.

=========================  ==========================================================
``policy``                 what a routing policy is; the registry (names, import paths)
``pow2_policy``            ``pow2``: Serve's power-of-two choices, by load alone
``prefix_policy``          ``prefix``: a conversation's turns go where its prefix is cached
``prefix_keys``            a request's prefix as cumulative block hashes; rendezvous hashing
``placement_table``        where each conversation lives, shared by the ingress replicas
``placement_service``      that table as a Ray actor, and each ingress replica's client
``replica_chooser``        the choosers: Serve ``RequestRouter`` classes that run a policy
``live_choosers``          the seam: how the ingress and ``/metrics`` reach those choosers
=========================  ==========================================================

Everything but ``placement_service``, ``replica_chooser`` and ``live_choosers`` is pure logic
with no Ray; Serve's private names are in :mod:`deployments.core.serve_private`.
"""

from deployments.routing.policy import Decision, RoutingPolicy, policy_class, register_policy, registered_policies

__all__ = ["Decision", "RoutingPolicy", "policy_class", "register_policy", "registered_policies"]
