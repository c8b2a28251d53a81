# stoa-gateway example policy (package stoa.authz), evaluated by the `opa` filter.
#
# Input (see README "opa filter"):
#   input.request.{method, path, query, headers, client_ip}, input.token (claims or null),
#   input.subject, input.tenant, input.roles, input.scopes, input.route
#
# `allow` is the default query (data.stoa.authz.allow); `decision` gives the same answer as an
# object with a reason and headers for the upstream (query: data.stoa.authz.decision).
package stoa.authz

import rego.v1

default allow := false

read_methods := {"GET", "HEAD", "OPTIONS"}

# Public paths need no identity.
public if {
	some prefix in data.stoa.public_prefixes
	startswith(input.request.path, prefix)
}

authenticated if input.token != null

# A tenant may only touch its own resources: /api/tenants/<tenant>/...
tenant_ok if {
	not startswith(input.request.path, "/api/tenants/")
}

tenant_ok if {
	parts := split(input.request.path, "/")
	parts[3] == input.tenant
}

blocked if input.tenant in data.stoa.blocked_tenants

writer if {
	some role in input.roles
	role in data.stoa.writer_roles
}

allow if public

allow if {
	authenticated
	not blocked
	tenant_ok
	input.request.method in read_methods
}

allow if {
	authenticated
	not blocked
	tenant_ok
	writer
}

reason := "public path" if public

else := "no identity: a token is required" if not authenticated

else := sprintf("tenant %s is blocked", [input.tenant]) if blocked

else := "this path belongs to another tenant" if not tenant_ok

else := sprintf("%s needs one of the roles %v", [input.request.method, data.stoa.writer_roles]) if {
	not input.request.method in read_methods
	not writer
}

else := "allowed"

decision := {
	"allow": allow,
	"reason": reason,
	"headers": {"x-policy-decision": "allow"},
} if allow

decision := {"allow": false, "reason": reason} if not allow
