-- 1. The development clock (dev mode only): the offset every control-plane process and every
--    edge adds to the wall clock, kept here like Stripe's test clocks live on the server, so
--    processes agree about what is due and a restart does not jump back to real time.
CREATE TABLE dev_clock (
    id          int PRIMARY KEY CHECK (id = 1),
    offset_ms   bigint NOT NULL CHECK (offset_ms >= 0),
    updated_at  timestamptz NOT NULL
);

-- 2. Period boundaries in whole milliseconds: edges and usage place events by the anchor in
--    unix ms, so an anchor with microseconds put a period's usage a fraction of a millisecond
--    before the period billing asked for. Truncating the anchor and both boundaries alike keeps
--    every boundary `anchor + k intervals` (month arithmetic never touches sub-seconds); new
--    subscriptions start on a whole second.
UPDATE subscriptions SET
    billing_anchor = date_trunc('milliseconds', billing_anchor),
    current_period_start = date_trunc('milliseconds', current_period_start),
    current_period_end = date_trunc('milliseconds', current_period_end);
