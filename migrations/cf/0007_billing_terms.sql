-- Automated billing (issue 12), cf_prod side.
--
-- 1. The catalog keeps what the rules say a plan charges for usage (each metered feature's
--    pricing model) and its trial, so a checkout can snapshot them.
ALTER TABLE plans ADD COLUMN trial_days int NOT NULL DEFAULT 0 CHECK (trial_days >= 0);
ALTER TABLE plans ADD COLUMN meters jsonb NOT NULL DEFAULT '[]';

-- 2. What a subscription bills besides its price (`billing::Terms`: per metered feature its
--    pricing and the quantity the plan includes), snapshotted when it was sold, like its price.
--    Subscriptions and checkouts from before this migration were sold without metered terms
--    (the catalog held no meter prices): they bill no usage.
ALTER TABLE checkouts ADD COLUMN terms jsonb;
ALTER TABLE subscriptions ADD COLUMN terms jsonb NOT NULL DEFAULT '{"meters": []}';

-- 3. Renewal: the subscriptions whose period ended and that renew (claimed in batches with
--    FOR UPDATE SKIP LOCKED by any number of control-plane processes).
CREATE INDEX subscriptions_renewal_due ON subscriptions (current_period_end)
    WHERE NOT cancel_at_period_end AND status IN ('trialing', 'active', 'past_due');

-- 4. The billing anchor: every period boundary is anchor + k intervals (calendar months from
--    the anchor, clamped to the month's last day), so periods never drift (31 Jan → 28 Feb →
--    31 Mar, not → 28 Mar).
ALTER TABLE subscriptions ADD COLUMN billing_anchor timestamptz;
UPDATE subscriptions SET billing_anchor = created_at;
ALTER TABLE subscriptions ALTER COLUMN billing_anchor SET NOT NULL;
