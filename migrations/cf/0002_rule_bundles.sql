-- Rule bundles uploaded by platform engineers, their rollout, the audit of every rollout
-- action, and what each edge reports running.

CREATE TABLE rule_bundles (
    version           bigint PRIMARY KEY CHECK (version > 0),
    sha256            text NOT NULL,
    source_hash       text NOT NULL,
    compiler_version  text NOT NULL,
    key_id            text NOT NULL,
    manifest          jsonb NOT NULL,
    bytes             bytea NOT NULL,
    uploaded_at       timestamptz NOT NULL,
    uploaded_by       text NOT NULL
);

-- Exactly one row: the stable bundle every edge runs, and an optional canary for a share of
-- edges chosen deterministically by edge id.
CREATE TABLE rule_rollout (
    id               int PRIMARY KEY CHECK (id = 1),
    stable_version   bigint REFERENCES rule_bundles (version),
    canary_version   bigint REFERENCES rule_bundles (version),
    canary_percent   int NOT NULL CHECK (canary_percent BETWEEN 0 AND 100),
    updated_at       timestamptz NOT NULL,
    updated_by       text NOT NULL,
    CHECK ((canary_version IS NULL) = (canary_percent = 0))
);

CREATE TABLE rule_audit (
    id        uuid PRIMARY KEY,
    action    text NOT NULL CHECK (action IN ('upload', 'activate', 'promote', 'rollback')),
    version   bigint NOT NULL,
    -- The stable version before the action (rollback without a target returns to it).
    previous_stable bigint,
    detail    jsonb NOT NULL,
    actor     text NOT NULL,
    at        timestamptz NOT NULL
);
CREATE INDEX rule_audit_at ON rule_audit (at);

CREATE TABLE edges (
    edge_id         text PRIMARY KEY CHECK (length(edge_id) BETWEEN 1 AND 128),
    bundle_version  bigint,
    last_error      text,
    last_seen       timestamptz NOT NULL
);
