"""The tenants file (deployments/tenants/tenants_file.py): a bad file names the tenant and field."""

from __future__ import annotations

import pytest

from deployments.tenants.tenants_file import parse_tenants
from tests.support.tenants import tenant_entry, tenants_yaml


@pytest.mark.parametrize("body,message", [
    ("tenants:\n  - name: a\n    keys: [not-a-digest]\n", "tenants[0] (a).keys: Value error, keys[0] is not a SHA-256"),
    (tenants_yaml(tenant_entry("a", "k"), tenant_entry("a", "j")), "tenant 'a' appears twice"),
    (tenants_yaml(tenant_entry("a", "k"), tenant_entry("b", "k")), "one key digest belongs to both 'a' and 'b'"),
    (tenants_yaml(tenant_entry("a", "k", "    requests_per_minute: 0\n")), "tenants[0] (a).requests_per_minute"),
    (tenants_yaml(tenant_entry("a b", "k")), "a tenant name is 1-63 letters"),
    (tenants_yaml(tenant_entry("a", "k", "    cache_group: 'x y'\n")), "tenants[0] (a).cache_group"),
    ("tenants: 3\n", "tenants: Input should be a valid list"),
    ("- a\n", "expected a mapping with a top-level `tenants:` list"),
])
def test_a_bad_file_names_the_tenant_and_field(body, message):
    with pytest.raises(ValueError) as info:
        parse_tenants(body, "t.yaml")
    assert message in str(info.value)


def test_each_tenant_has_its_own_prefix_cache_unless_it_shares_a_group():
    from deployments.tenants.api_keys import default_tenant

    tenants = parse_tenants(tenants_yaml(
        tenant_entry("a", "ka", "    cache_group: team\n"), tenant_entry("b", "kb", "    cache_group: team\n"),
        tenant_entry("c", "kc"), tenant_entry("team", "kt")), "t.yaml").tenants
    salts = [t.cache_salt for t in tenants]
    assert salts[0] == salts[1] == "group:team"
    assert salts[2] == "tenant:c" and salts[3] == "tenant:team", "a tenant named like a group is not in it"
    assert default_tenant().cache_salt is None, "the plain keys' callers keep the shared cache"
