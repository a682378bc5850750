-- billing_prod: billing schedules (more tables arrive with metering, invoicing and dunning).

-- Idempotent consumer: one row per outbox event applied, written in the same transaction as
-- its effect.
CREATE TABLE inbox (
    event_id      uuid PRIMARY KEY,
    topic         text NOT NULL,
    processed_at  timestamptz NOT NULL
);

CREATE TABLE billing_schedules (
    subscription_id  uuid PRIMARY KEY,
    account_id       uuid NOT NULL,
    plan_key         text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor >= 0),
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval         text NOT NULL CHECK (interval IN ('month', 'year')),
    next_bill_at     timestamptz,
    status           text NOT NULL CHECK (status IN ('active', 'canceled')),
    -- Version of the subscription that last wrote this row; older events never overwrite.
    source_seq       bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX billing_schedules_due ON billing_schedules (next_bill_at) WHERE status = 'active';
