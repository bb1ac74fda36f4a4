"""Tenants: who calls the service, and what each may use.

- :mod:`~deployments.tenants.tenants_file`: the tenants file (``router.auth.tenants_file``) as
  typed, validated models, and ``glm-serve hash-key``'s digest;
- :mod:`~deployments.tenants.api_keys`: an ingress replica's view of the callers and their
  tenants, keyed by the digest of each API key, kept current as the file changes;
- :mod:`~deployments.tenants.buckets`: the token bucket, the pure arithmetic of a rate limit;
- :mod:`~deployments.tenants.quota_service`: the cluster-wide limits (one Ray actor per
  application) and the leases each router replica takes from it;
- :mod:`~deployments.tenants.rate_headers`: OpenAI's ``x-ratelimit-*`` headers and its 429.
"""
