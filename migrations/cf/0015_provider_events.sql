-- Webhooks received from the payment provider (control-plane/src/provider_events): stored
-- before they are handled (durable before the 2xx), once per event id; `processed_at` is set
-- once handled, so a redelivery of a handled event changes nothing.
CREATE TABLE provider_events (
    id            text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    provider      text NOT NULL CHECK (provider IN ('stripe', 'braintree')),
    type          text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    object_id     text,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL,
    processed_at  timestamptz,
    -- What it changed: checkout, charge or none.
    applied       text
);
CREATE INDEX provider_events_object ON provider_events (object_id);
