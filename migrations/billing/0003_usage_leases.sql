-- Quota leases: edges reserve slices of an account's metered quota here and serve checks from
-- them (control-plane/src/usage.rs, `lease`). One counter per (account, meter, period): the
-- units leased out to all edges, minus those given back. It starts at the period's aggregate
-- when the first lease is asked for, and a grant never takes it past the quota. The leases
-- table says which edge holds what (for operators and for the release path).
CREATE TABLE usage_lease_counters (
    account_id    uuid NOT NULL,
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    leased        bigint NOT NULL CHECK (leased >= 0),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, meter, period_start)
);

CREATE TABLE usage_leases (
    account_id    uuid NOT NULL,
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    edge_id       text NOT NULL,
    granted       bigint NOT NULL CHECK (granted >= 0),
    returned      bigint NOT NULL CHECK (returned >= 0),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, meter, period_start, edge_id)
);
