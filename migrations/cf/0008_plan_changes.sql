-- Plan changes (issue 12): a downgrade waits for the period end by default; the change it
-- will make (`subscriptions::change::PendingChange`: plan, price, interval, terms) is kept on
-- the subscription and applied by the renewal that starts the next period.
ALTER TABLE subscriptions ADD COLUMN pending_change jsonb;
