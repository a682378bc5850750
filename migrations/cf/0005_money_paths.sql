-- Money paths without locks across provider calls, checkouts that complete from their own
-- snapshot, and a catalog that is exactly the stable bundle's.

-- 1. The sold catalog. A plan or feature the stable bundle does not list is kept (subscriptions
--    and checkouts refer to it) but not sold: `sold` / `in_catalog` say so, positions order only
--    what is sold. (The old scheme hid rows with position = -position - 1, which a second
--    promotion without the row turned back into a sold position.)
ALTER TABLE plans ADD COLUMN sold boolean NOT NULL DEFAULT true;
ALTER TABLE plans ALTER COLUMN position DROP NOT NULL;
UPDATE plans SET sold = position >= 0, position = CASE WHEN position >= 0 THEN position END;
ALTER TABLE plans ALTER COLUMN sold DROP DEFAULT;
ALTER TABLE plans ADD CONSTRAINT plans_sold_positioned CHECK (sold = (position IS NOT NULL));

ALTER TABLE features ADD COLUMN in_catalog boolean NOT NULL DEFAULT true;
ALTER TABLE features ALTER COLUMN position DROP NOT NULL;
UPDATE features SET in_catalog = position >= 0, position = CASE WHEN position >= 0 THEN position END;
ALTER TABLE features ALTER COLUMN in_catalog DROP DEFAULT;
ALTER TABLE features ADD CONSTRAINT features_listed_positioned CHECK (in_catalog = (position IS NOT NULL));

-- 2. Subscriptions keep the interval they were sold with (the catalog may change under them).
ALTER TABLE subscriptions ADD COLUMN interval text;
UPDATE subscriptions s SET interval = p.interval FROM plans p WHERE p.key = s.plan_key;
ALTER TABLE subscriptions ALTER COLUMN interval SET NOT NULL;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_interval CHECK (interval IN ('month', 'year'));

-- 3. Checkouts: a snapshot of what was sold (price and currency were already there; the
--    interval and the stable bundle's version now too), the provider call's idempotency key, and
--    the states of a purchase that never holds a lock across the provider call:
--    pending (reserved; the provider call's outcome is not recorded yet) → requires_action
--    (3-D Secure) → succeeded | failed | expired | canceled; or → refunding → refunded (paid,
--    but the plan was no longer sold when the purchase completed: refunded by policy).
ALTER TABLE checkouts ADD COLUMN interval text;
UPDATE checkouts c SET interval = p.interval FROM plans p WHERE p.key = c.plan_key;
ALTER TABLE checkouts ALTER COLUMN interval SET NOT NULL;
ALTER TABLE checkouts ADD CONSTRAINT checkouts_interval CHECK (interval IN ('month', 'year'));
ALTER TABLE checkouts ADD COLUMN bundle_version bigint;
ALTER TABLE checkouts ADD COLUMN provider_key text;
ALTER TABLE checkouts ADD COLUMN refund_id text;
ALTER TABLE checkouts ADD COLUMN refund_reason text;
ALTER TABLE checkouts DROP CONSTRAINT checkouts_status_check;
ALTER TABLE checkouts ADD CONSTRAINT checkouts_status_check CHECK (status IN
    ('pending', 'requires_action', 'succeeded', 'failed', 'expired', 'canceled', 'refunding', 'refunded'));
DROP INDEX checkouts_open;
CREATE INDEX checkouts_open ON checkouts (expires_at) WHERE status IN ('pending', 'requires_action', 'refunding');
DROP INDEX checkouts_one_open_per_account;
-- At most one purchase in flight per account (concurrent checkouts: one wins, the others 409).
CREATE UNIQUE INDEX checkouts_one_open_per_account ON checkouts (account_id)
    WHERE status IN ('pending', 'requires_action');

-- 4. Payment methods: a set-up abandoned at 3-D Secure is reconciled (the provider's state
--    read, the SetupIntent canceled when still waiting) instead of waiting forever.
ALTER TABLE payment_methods DROP CONSTRAINT payment_methods_status_check;
ALTER TABLE payment_methods ADD CONSTRAINT payment_methods_status_check CHECK (status IN
    ('pending', 'ready', 'requires_action', 'failed', 'canceled'));
CREATE INDEX payment_methods_waiting ON payment_methods (created_at)
    WHERE status IN ('pending', 'requires_action');

-- 5. Idempotency records in two steps around the provider call: `in_progress` while the call
--    runs (`locked_until` bounds how long another attempt waits for it; past it, a retry
--    resumes the same operation, `resource_id` naming what it created), then `completed` with
--    the response. Records are swept 24 h after they were created, as Stripe's are.
ALTER TABLE idempotency_keys ADD COLUMN state text NOT NULL DEFAULT 'completed'
    CHECK (state IN ('in_progress', 'completed'));
ALTER TABLE idempotency_keys ALTER COLUMN state DROP DEFAULT;
ALTER TABLE idempotency_keys ADD COLUMN resource_id uuid;
ALTER TABLE idempotency_keys ADD COLUMN locked_until timestamptz;
ALTER TABLE idempotency_keys ALTER COLUMN response_status DROP NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN response_body DROP NOT NULL;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_completed_has_response
    CHECK ((state = 'completed') = (response_status IS NOT NULL AND response_body IS NOT NULL));
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- 6. The simulated payment provider's own state (development and tests only; unused with a
--    real Stripe key). It lives here, not in process memory, so it outlives any control-plane
--    process and every process of a stack sees the same objects, like a real provider.
CREATE TABLE sim_customers (
    id          text PRIMARY KEY,
    email       text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TABLE sim_payment_methods (
    id          text PRIMARY KEY,
    customer    text NOT NULL REFERENCES sim_customers (id),
    behaviour   text NOT NULL,
    brand       text NOT NULL,
    last4       text NOT NULL
);
-- Setup and payment intents; `state` is the simulator's own JSON (status, decline, amounts).
CREATE TABLE sim_intents (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('setup', 'payment')),
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- Provider idempotency: the same key with the same parameters returns the first result.
CREATE TABLE sim_idempotency (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    result       jsonb NOT NULL
);
