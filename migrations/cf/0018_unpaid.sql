-- The `unpaid` exhaustion policy (TOLLGATE_DUNNING_ON_EXHAUSTION=unpaid): when dunning gives an
-- invoice up, the subscription is kept as `unpaid` instead of canceled: not renewed, granting
-- nothing, still the account's one live subscription, active again once its invoice is paid.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_status_check
    CHECK (status IN ('trialing', 'active', 'past_due', 'canceled', 'unpaid'));
DROP INDEX subscriptions_one_live_per_account;
CREATE UNIQUE INDEX subscriptions_one_live_per_account ON subscriptions (account_id)
    WHERE status IN ('trialing', 'active', 'past_due', 'unpaid');
