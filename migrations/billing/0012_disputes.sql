-- Disputes (chargebacks) of payments we booked (control-plane/src/disputes): one row per
-- provider dispute, its state as the provider last told it, and every change it went through.
--
-- Ledger: when a dispute opens the processor withholds the disputed amount (cash → disputed);
-- won, it is returned (disputed → cash); lost, it is gone (disputed → chargebacks, an expense).
-- An inquiry (no money withheld) books nothing unless it becomes a dispute.
CREATE TABLE disputes (
    id                   uuid PRIMARY KEY,
    provider             text NOT NULL CHECK (provider ~ '^[a-z0-9_]{1,32}$'),
    provider_dispute_id  text NOT NULL CHECK (length(provider_dispute_id) BETWEEN 1 AND 255),
    account_id           uuid NOT NULL,
    -- The invoice whose payment is disputed, when the payment paid one.
    invoice_id           uuid,
    -- The disputed payment at the provider (PaymentIntent or transaction id).
    provider_payment_id  text NOT NULL CHECK (length(provider_payment_id) BETWEEN 1 AND 255),
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status               text NOT NULL CHECK (status IN ('inquiry', 'needs_response',
                             'under_review', 'won', 'lost', 'closed')),
    reason               text CHECK (length(reason) <= 100),
    -- When the provider's state we hold was true (the newest state we saw wins).
    observed_at          timestamptz NOT NULL,
    opened_at            timestamptz NOT NULL,
    closed_at            timestamptz,
    UNIQUE (provider, provider_dispute_id),
    CHECK ((status IN ('won', 'lost', 'closed')) = (closed_at IS NOT NULL))
);
CREATE INDEX disputes_account ON disputes (account_id, opened_at);
CREATE INDEX disputes_open ON disputes (observed_at) WHERE closed_at IS NULL;

CREATE TABLE dispute_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dispute_id   uuid NOT NULL REFERENCES disputes (id),
    status       text NOT NULL,
    -- What told us: a webhook event id, `reconcile`, or `dev`.
    cause        text NOT NULL CHECK (length(cause) BETWEEN 1 AND 255),
    observed_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL
);
CREATE INDEX dispute_events_dispute ON dispute_events (dispute_id, id);

ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (kind IN
    ('invoice_finalized', 'payment', 'credit', 'credit_note', 'refund', 'write_off',
     'write_off_reversal', 'dispute_opened', 'dispute_won', 'dispute_lost'));

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_ledger_account_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_ledger_account_check CHECK (ledger_account ~
    '^(receivable|credit|refunds|bad_debt|disputed|chargebacks|cash:[a-z0-9_]{1,32}|revenue:(plan|meter|addon):[A-Za-z0-9_.-]{1,128})$');

ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check CHECK (topic IN ('billing.payment_failed',
    'billing.invoice_paid', 'billing.dunning_changed', 'billing.invoice_uncollectible',
    'billing.invoice_finalized', 'billing.dispute_changed'));
