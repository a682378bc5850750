# The demo rules (`rules/examples/demo.tg`) in Rego, for the `materialise` harness's regorus
# row. Input: one account's fact vector with its slots named (the same numbers the interpreter
# and the WebAssembly module read). Output, `data.tollgate.decisions`: per feature `allowed`,
# the limit as `kind` (0 none, 1 finite, 2 unlimited) and `value`, and the numeric reason code
# (`ReasonCode` in `rules/src/ir.rs`). The harness compares every account's decisions with
# the interpreter's. Steps in the order Tollgate applies them: plan, add-ons, the three rules
# in order (each sees what the one before decided), support overrides.
package tollgate

features := ["sso", "exports", "seats", "api_calls"]

# Plan index → feature → [limit kind, limit value] of its grant.
plan_grants := {
	0: {"seats": [1, 1], "api_calls": [1, 1000]},
	1: {"sso": [0, 0], "exports": [0, 0], "seats": [1, 10], "api_calls": [1, 100000]},
	2: {"sso": [0, 0], "exports": [0, 0], "seats": [1, 100], "api_calls": [1, 5000000]},
}

# trialing, active, past_due
status_grants if input.status in {1, 2, 3}

known_plan if plan_grants[input.plan]

base_reason := 1 if {
	status_grants
	known_plan
} else := 2

denied(reason) := {"allowed": false, "kind": 0, "value": 0, "reason": reason}

base_decision(f) := {"allowed": true, "kind": g[0], "value": g[1], "reason": 0} if {
	status_grants
	g := plan_grants[input.plan][f]
} else := denied(base_reason)

base[f] := base_decision(f) if some f in features

# addon extra_seats: seats + 5 per pack
limit_if_allowed(d) := [d.kind, d.value] if d.allowed else := [0, 0]

add_limit(l, n) := [1, n] if l[0] == 0 else := [1, l[1] + n] if l[0] == 1 else := [2, 0]

reason_unless_allowed(d, reason) := d.reason if d.allowed else := reason

addon_step(f, d) := {"allowed": true, "kind": l[0], "value": l[1], "reason": reason_unless_allowed(d, 4)} if {
	f == "seats"
	input.addons.extra_seats > 0
	l := add_limit(limit_if_allowed(d), 5 * input.addons.extra_seats)
} else := d

with_addons[f] := addon_step(f, base[f]) if some f in features

# rule "banned" when banned => deny all reason denied_banned
banned_step(d) := denied(3) if input.banned != 0 else := d

after_banned[f] := banned_step(with_addons[f]) if some f in features

# rule "late exports" when status == past_due and days_past_due > 7 => deny exports
late_step(f, d) := denied(7) if {
	f == "exports"
	input.status == 3
	input.days_past_due > 7
} else := d

after_late[f] := late_step(f, after_banned[f]) if some f in features

# rule "read-only when dunning" when dunning_level >= 3 => cap metered at usage
capped_value(d, usage) := min([d.value, usage]) if d.kind == 1 else := usage

cap_step(f, d) := {"allowed": true, "kind": 1, "value": capped_value(d, input.usage[f]), "reason": 8} if {
	f == "api_calls"
	input.dunning_level >= 3
	d.allowed
} else := d

after_cap[f] := cap_step(f, after_late[f]) if some f in features

# support overrides: 1 deny, 2 grant with its own limit (kind finite or unlimited, else none)
override_limit(o) := [1, o.value] if o.kind == 1 else := [2, 0] if o.kind == 2 else := [0, 0]

override_step(f, d) := denied(9) if {
	input.overrides[f].mode == 1
} else := {"allowed": true, "kind": l[0], "value": l[1], "reason": 9} if {
	input.overrides[f].mode == 2
	l := override_limit(input.overrides[f])
} else := d

decisions[f] := override_step(f, after_cap[f]) if some f in features
