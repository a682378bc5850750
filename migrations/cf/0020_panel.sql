-- The NinjaPanel (control-plane/src/agents, audit, api/panel.rs): support agents, their audited
-- actions, notes on accounts, and per-account entitlement overrides.
CREATE TABLE agents (
    id          uuid PRIMARY KEY,
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role        text NOT NULL CHECK (role IN ('viewer', 'support', 'billing_admin')),
    -- SHA-256 of the agent's token; the token itself is never stored.
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX agents_one_live_per_email ON agents (lower(email)) WHERE revoked_at IS NULL;

-- Every panel write: who, what, on what, why, the state before and after, and what was answered
-- (a repeat under the same Idempotency-Key answers it again). Written in the transaction of the
-- write's effect; billing_prod has the same table for the writes whose effect is there.
CREATE TABLE agent_actions (
    id               uuid PRIMARY KEY,
    agent_id         uuid NOT NULL,
    agent_email      text NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    action           text NOT NULL CHECK (action ~ '^[a-z_.]{1,64}$'),
    account_id       uuid,
    target           text NOT NULL CHECK (length(target) BETWEEN 1 AND 255),
    reason           text NOT NULL CHECK (length(reason) BETWEEN 3 AND 2000),
    before           jsonb NOT NULL,
    after            jsonb NOT NULL,
    response         jsonb NOT NULL,
    at               timestamptz NOT NULL,
    UNIQUE (agent_id, idempotency_key)
);
CREATE INDEX agent_actions_account ON agent_actions (account_id, at);
CREATE OR REPLACE FUNCTION agent_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER agent_actions_append_only BEFORE UPDATE OR DELETE ON agent_actions
    FOR EACH ROW EXECUTE FUNCTION agent_actions_append_only();

CREATE TABLE account_notes (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    agent_id    uuid NOT NULL REFERENCES agents (id),
    body        text NOT NULL CHECK (length(body) BETWEEN 1 AND 5000),
    created_at  timestamptz NOT NULL
);
CREATE INDEX account_notes_account ON account_notes (account_id, created_at);

CREATE TABLE entitlement_overrides (
    id           uuid PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id),
    feature_key  text NOT NULL CHECK (length(feature_key) BETWEEN 1 AND 128),
    mode         text NOT NULL CHECK (mode IN ('grant', 'deny')),
    -- A grant's limit (none: the feature's own); always none for a deny.
    limit_value  bigint CHECK (limit_value >= 0),
    expires_at   timestamptz,
    created_by   uuid NOT NULL REFERENCES agents (id),
    created_at   timestamptz NOT NULL,
    removed_at   timestamptz,
    CHECK (mode = 'grant' OR limit_value IS NULL)
);
CREATE UNIQUE INDEX entitlement_overrides_one_live ON entitlement_overrides (account_id, feature_key)
    WHERE removed_at IS NULL;
CREATE INDEX entitlement_overrides_expiring ON entitlement_overrides (expires_at)
    WHERE removed_at IS NULL AND expires_at IS NOT NULL;
