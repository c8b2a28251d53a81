# Unit tests for authz.rego; run by the test suite through regorus
# (and by `stoa-gateway --test-policies conf/policies`).
package stoa.authz_test

import rego.v1

import data.stoa.authz

reader := {"sub": "u1", "tenant": "acme"}

test_public_path_needs_no_token if {
	authz.allow with input as {"request": {"method": "GET", "path": "/public/info"}, "token": null, "roles": []}
}

test_anonymous_read_is_denied if {
	not authz.allow with input as {"request": {"method": "GET", "path": "/api/orders"}, "token": null, "roles": []}
}

test_authenticated_read_is_allowed if {
	authz.allow with input as {"request": {"method": "GET", "path": "/api/orders"}, "token": reader, "tenant": "acme", "roles": []}
}

test_write_needs_a_writer_role if {
	not authz.allow with input as {"request": {"method": "POST", "path": "/api/orders"}, "token": reader, "tenant": "acme", "roles": ["viewer"]}
	authz.allow with input as {"request": {"method": "POST", "path": "/api/orders"}, "token": reader, "tenant": "acme", "roles": ["editor"]}
}

test_other_tenant_is_denied if {
	not authz.allow with input as {"request": {"method": "GET", "path": "/api/tenants/globex/orders"}, "token": reader, "tenant": "acme", "roles": ["admin"]}
	authz.allow with input as {"request": {"method": "GET", "path": "/api/tenants/acme/orders"}, "token": reader, "tenant": "acme", "roles": []}
}

test_blocked_tenant_is_denied_with_reason if {
	d := authz.decision with input as {"request": {"method": "GET", "path": "/api/orders"}, "token": reader, "tenant": "suspended-co", "roles": []}
	d.allow == false
	d.reason == "tenant suspended-co is blocked"
}

test_decision_carries_headers_when_allowed if {
	d := authz.decision with input as {"request": {"method": "GET", "path": "/api/orders"}, "token": reader, "tenant": "acme", "roles": []}
	d.allow
	d.headers["x-policy-decision"] == "allow"
}
