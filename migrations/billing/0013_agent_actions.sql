-- Panel writes whose effect is in billing_prod (credits, voids, dunning retries, disputes) are
-- audited here, in the effect's own transaction (the same shape as cf's agent_actions).
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
