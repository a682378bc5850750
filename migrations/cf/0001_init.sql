-- cf_prod: accounts, payment-method references, catalog, checkouts, subscriptions,
-- entitlement facts, idempotency records and the outbox.
-- Business timestamps are written by the application from its injectable clock; columns have
-- no DEFAULT now() on purpose.

CREATE TABLE accounts (
    id                  uuid PRIMARY KEY,
    email               text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    standing            text NOT NULL CHECK (standing IN ('active', 'banned')),
    gateway             text NOT NULL,
    gateway_customer_id text NOT NULL,
    default_payment_method_id uuid,
    created_at          timestamptz NOT NULL,
    CONSTRAINT accounts_gateway_customer_unique UNIQUE (gateway, gateway_customer_id)
);

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    -- SHA-256 of the token; the token itself is never stored.
    token_hash  bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CONSTRAINT api_tokens_hash_unique UNIQUE (token_hash)
);

-- Client-supplied Idempotency-Key records. `scope` is the account id, or 'signup' before an
-- account exists. The row is written in the same transaction as the effect it guards.
CREATE TABLE idempotency_keys (
    scope            text NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    response_status  int NOT NULL,
    response_body    jsonb NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE payment_methods (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id),
    gateway            text NOT NULL,
    gateway_pm_id      text NOT NULL,
    setup_intent_id    text NOT NULL,
    status             text NOT NULL CHECK (status IN ('ready', 'requires_action', 'failed')),
    client_secret      text,
    make_default       boolean NOT NULL,
    brand              text,
    last4              text,
    exp_month          int,
    exp_year           int,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX payment_methods_account ON payment_methods (account_id, created_at);

ALTER TABLE accounts ADD CONSTRAINT accounts_default_pm_fk
    FOREIGN KEY (default_payment_method_id) REFERENCES payment_methods (id);

CREATE TABLE features (
    key     text PRIMARY KEY,
    kind    text NOT NULL CHECK (kind IN ('bool', 'limit', 'metered')),
    period  text,
    position int NOT NULL UNIQUE
);

CREATE TABLE plans (
    key          text PRIMARY KEY,
    name         text NOT NULL,
    price_minor  bigint NOT NULL CHECK (price_minor >= 0),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval     text NOT NULL CHECK (interval IN ('month', 'year')),
    position     int NOT NULL UNIQUE
);

CREATE TABLE plan_features (
    plan_key     text NOT NULL REFERENCES plans (key) ON DELETE CASCADE,
    feature_key  text NOT NULL REFERENCES features (key),
    limit_value  bigint CHECK (limit_value >= 0),
    PRIMARY KEY (plan_key, feature_key)
);

CREATE TABLE subscriptions (
    id                    uuid PRIMARY KEY,
    account_id            uuid NOT NULL REFERENCES accounts (id),
    plan_key              text NOT NULL REFERENCES plans (key),
    status                text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'canceled')),
    amount_minor          bigint NOT NULL CHECK (amount_minor >= 0),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL CHECK (current_period_end > current_period_start),
    cancel_at_period_end  boolean NOT NULL,
    canceled_at           timestamptz,
    -- Grows with every change; consumers in billing_prod never apply an older revision.
    revision              bigint NOT NULL CHECK (revision > 0),
    created_at            timestamptz NOT NULL
);
-- One live subscription per account.
CREATE UNIQUE INDEX subscriptions_one_live_per_account ON subscriptions (account_id)
    WHERE status IN ('trialing', 'active', 'past_due');
CREATE INDEX subscriptions_period_end ON subscriptions (current_period_end)
    WHERE cancel_at_period_end AND status <> 'canceled';

-- An on-session purchase: the first period's payment, with 3-D Secure when the card asks.
CREATE TABLE checkouts (
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id),
    plan_key            text NOT NULL REFERENCES plans (key),
    payment_method_id   uuid REFERENCES payment_methods (id),
    amount_minor        bigint NOT NULL CHECK (amount_minor >= 0),
    currency            char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    payment_intent_id   text,
    client_secret       text,
    status              text NOT NULL CHECK (status IN ('requires_action', 'succeeded', 'failed', 'expired')),
    decline_code        text,
    subscription_id     uuid REFERENCES subscriptions (id),
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX checkouts_open ON checkouts (expires_at) WHERE status = 'requires_action';
-- At most one checkout waiting for the customer per account.
CREATE UNIQUE INDEX checkouts_one_open_per_account ON checkouts (account_id) WHERE status = 'requires_action';

-- The entitlement facts of each account, versioned; the relay writes them.
CREATE TABLE entitlement_facts (
    account_id  uuid PRIMARY KEY REFERENCES accounts (id),
    version     bigint NOT NULL CHECK (version > 0),
    facts       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Transactional outbox: written in the same transaction as the change it announces.
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    topic         text NOT NULL CHECK (topic IN ('entitlements.recompute', 'entitlements.publish', 'billing.schedule')),
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    available_at  timestamptz NOT NULL,
    attempts      int NOT NULL DEFAULT 0,
    last_error    text,
    processed_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (available_at) WHERE processed_at IS NULL;
