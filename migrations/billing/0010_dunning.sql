-- Dunning (control-plane/src/dunning): one case per invoice whose off-session charge failed.
-- The policy schedules retries (each one a charge attempt of its own, taken by the charger)
-- and escalates levels 1–4; a hard decline waits for a new payment method; the last failed
-- retry exhausts the case: the invoice is uncollectible and written off to bad debt. Any later
-- payment of the invoice recovers it (the write-off is reversed). Every step is a row of the
-- case's history.
CREATE TABLE dunning_cases (
    id               uuid PRIMARY KEY,
    invoice_id       uuid NOT NULL UNIQUE REFERENCES invoices (id),
    account_id       uuid NOT NULL,
    subscription_id  uuid,
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL CHECK (status IN
        ('retrying', 'awaiting_payment_method', 'exhausted', 'recovered')),
    level            int NOT NULL CHECK (level BETWEEN 1 AND 4),
    -- Retries handed to the charger so far.
    retries          int NOT NULL DEFAULT 0 CHECK (retries >= 0),
    -- When the next retry is due (NULL: none scheduled).
    next_retry_at    timestamptz,
    last_code        text,
    -- What exhaustion wrote off (reversed on recovery).
    written_off_minor bigint NOT NULL DEFAULT 0 CHECK (written_off_minor >= 0),
    opened_at        timestamptz NOT NULL,
    exhausted_at     timestamptz,
    recovered_at     timestamptz,
    updated_at       timestamptz NOT NULL,
    CHECK ((status = 'recovered') = (recovered_at IS NOT NULL)),
    CHECK (status = 'retrying' OR next_retry_at IS NULL)
);
CREATE INDEX dunning_cases_due ON dunning_cases (next_retry_at) WHERE next_retry_at IS NOT NULL;
CREATE INDEX dunning_cases_account ON dunning_cases (account_id) WHERE status <> 'recovered';

CREATE TABLE dunning_events (
    case_id  uuid NOT NULL REFERENCES dunning_cases (id),
    seq      int NOT NULL CHECK (seq >= 1),
    at       timestamptz NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('opened', 'retry_scheduled', 'retry_started',
        'payment_failed', 'hard_decline', 'payment_method_added', 'exhausted', 'recovered')),
    level    int NOT NULL,
    -- Why: the decline code, or what happened.
    cause    text NOT NULL CHECK (length(cause) BETWEEN 1 AND 500),
    PRIMARY KEY (case_id, seq)
);

-- What dunning says about an account, versioned: cf applies a snapshot only when it is newer
-- than the one it has (`billing.dunning_changed`), so late deliveries cannot go backwards.
CREATE TABLE dunning_accounts (
    account_id               uuid PRIMARY KEY,
    version                  bigint NOT NULL CHECK (version >= 1),
    level                    int NOT NULL CHECK (level BETWEEN 0 AND 4),
    past_due_since           timestamptz,
    payment_method_required  boolean NOT NULL,
    bad_debt_minor           bigint NOT NULL CHECK (bad_debt_minor >= 0),
    updated_at               timestamptz NOT NULL
);

ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check CHECK (topic IN ('billing.payment_failed',
    'billing.invoice_paid', 'billing.dunning_changed', 'billing.invoice_uncollectible'));

ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (kind IN
    ('invoice_finalized', 'payment', 'credit', 'credit_note', 'refund', 'write_off',
     'write_off_reversal'));
