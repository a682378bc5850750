-- What billing's dunning says about an account (`billing.dunning_changed`, applied only when
-- newer): the facts carry the level and the days past due to the edges; a required payment
-- method blocks purchases and plan changes until one is added. A ban for bad debt is lifted
-- when the debt is paid; a ban for any other reason is not.
ALTER TABLE accounts ADD COLUMN dunning_version bigint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN dunning_level int NOT NULL DEFAULT 0 CHECK (dunning_level BETWEEN 0 AND 4);
ALTER TABLE accounts ADD COLUMN past_due_since timestamptz;
ALTER TABLE accounts ADD COLUMN payment_method_required boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN bad_debt_minor bigint NOT NULL DEFAULT 0 CHECK (bad_debt_minor >= 0);
ALTER TABLE accounts ADD COLUMN ban_reason text CHECK (ban_reason IN ('bad_debt', 'support'));

ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check CHECK (topic IN ('entitlements.recompute',
    'entitlements.publish', 'billing.schedule', 'dunning.payment_method_added'));
