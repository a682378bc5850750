-- Emails to customers (control-plane/src/mail): written in the transaction of what they tell
-- (a dunning step applied from billing), sent by their own loop at least once, retried with
-- backoff; the log shows what was sent, what waits and why it failed.
CREATE TABLE emails (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id),
    kind             text NOT NULL CHECK (kind IN
        ('payment_failed', 'retry_scheduled', 'final_warning', 'uncollectible', 'recovered')),
    to_address       text NOT NULL,
    subject          text NOT NULL,
    text_body        text NOT NULL,
    html_body        text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz,
    last_error       text,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status = 'pending';
CREATE INDEX emails_account ON emails (account_id, created_at);
