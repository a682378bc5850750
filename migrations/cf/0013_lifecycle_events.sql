-- Outbound lifecycle events (control-plane/src/events): every change the company's own systems
-- may want (invoice finalised / paid / uncollectible, payment failed, dunning changed,
-- subscription created / updated / canceled, account banned / unbanned) is one row, written in
-- the transaction of the change (or of the consumer that learnt it from billing, keyed by the
-- billing event's id so a redelivery adds nothing), with one delivery per endpoint that wants
-- it. Deliveries are Standard Webhooks POSTs, retried with backoff for about three days, at
-- least once; the log is kept and a delivery can be replayed.
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    url         text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    -- `whsec_` + base64 of the HMAC key (shown once, when the endpoint is created).
    secret      text NOT NULL,
    -- Event types it wants; empty: all.
    events      text[] NOT NULL DEFAULT '{}',
    enabled     boolean NOT NULL DEFAULT true,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE lifecycle_events (
    id           uuid PRIMARY KEY,
    type         text NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$'),
    account_id   uuid,
    payload      jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX lifecycle_events_account ON lifecycle_events (account_id, occurred_at);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES lifecycle_events (id),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id),
    status           text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When it is (next) tried; a claim pushes it forward (a lease).
    next_attempt_at  timestamptz,
    last_status      int,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL,
    UNIQUE (event_id, endpoint_id),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
