-- 1. The catalog mirrored to the payment provider: one row per plan and bundle version, written
--    in the promotion's transaction (the intent survives any crash) and completed by the
--    maintenance worker outside any transaction (a provider call never holds a row lock). The
--    lookup key `<plan>:v<version>` finds the provider's price again after a crash, so a price is
--    created once however often the worker retries.
CREATE TABLE plan_prices (
    lookup_key      text PRIMARY KEY,
    plan_key        text NOT NULL,
    bundle_version  bigint NOT NULL,
    name            text NOT NULL,
    amount_minor    bigint NOT NULL CHECK (amount_minor >= 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval        text NOT NULL CHECK (interval IN ('month', 'year')),
    requested_at    timestamptz NOT NULL,
    -- When the worker may (next) try; a claim pushes it forward (a lease), so two workers
    -- never call the provider for the same row at once.
    next_try_at     timestamptz NOT NULL,
    attempts        int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    -- Filled once mirrored (the gateway's name, `stripe` or `simulated`).
    provider        text,
    product_id      text,
    price_id        text,
    mirrored_at     timestamptz,
    UNIQUE (plan_key, bundle_version),
    CHECK ((mirrored_at IS NULL) = (price_id IS NULL)),
    CHECK ((mirrored_at IS NULL) = (provider IS NULL)),
    CHECK ((mirrored_at IS NULL) = (product_id IS NULL))
);
CREATE INDEX plan_prices_due ON plan_prices (next_try_at) WHERE mirrored_at IS NULL;

-- 2. The simulated provider's catalog (development and tests only), like Stripe's: a product
--    per plan, prices found by a unique lookup key.
CREATE TABLE sim_products (
    id    text PRIMARY KEY,
    name  text NOT NULL
);
CREATE TABLE sim_prices (
    id            text PRIMARY KEY,
    lookup_key    text NOT NULL UNIQUE,
    product       text NOT NULL REFERENCES sim_products (id),
    amount_minor  bigint NOT NULL,
    currency      text NOT NULL,
    interval      text NOT NULL
);
