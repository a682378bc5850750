-- billing's outbox also announces finalised invoices (cf records them as outbound events).
ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check CHECK (topic IN ('billing.payment_failed',
    'billing.invoice_paid', 'billing.dunning_changed', 'billing.invoice_uncollectible',
    'billing.invoice_finalized'));
