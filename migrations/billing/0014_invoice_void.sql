-- A support agent voids an open invoice (control-plane/src/billing/voids.rs): the ledger books
-- it as `invoice_voided` (what was still owed leaves the receivable, credit applied to it
-- returns to the customer), and billing's outbox tells cf (`billing.invoice_voided`: the
-- subscription it held past due is active again).
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (kind IN
    ('invoice_finalized', 'payment', 'credit', 'credit_note', 'refund', 'write_off',
     'write_off_reversal', 'dispute_opened', 'dispute_won', 'dispute_lost', 'invoice_voided'));

ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check CHECK (topic IN ('billing.payment_failed',
    'billing.invoice_paid', 'billing.dunning_changed', 'billing.invoice_uncollectible',
    'billing.invoice_finalized', 'billing.dispute_changed', 'billing.invoice_voided'));
