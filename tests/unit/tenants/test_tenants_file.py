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
    ("tenants: 3\n", "tenants: Input should be a valid list"),
    ("- a\n", "expected a mapping with a top-level `tenants:` list"),
])
def test_a_bad_file_names_the_tenant_and_field(body, message):
    with pytest.raises(ValueError) as info:
        parse_tenants(body, "t.yaml")
    assert message in str(info.value)
