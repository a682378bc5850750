-- The Dashboard's account profile and billing contacts, removable payment methods and the
-- customer's own API tokens (control-plane/src/accounts, payment_methods).
ALTER TABLE accounts ADD COLUMN billing_address jsonb;
ALTER TABLE accounts ADD COLUMN tax_id text CHECK (length(tax_id) BETWEEN 1 AND 64);

-- Who gets the account's invoices and dunning emails (the account's email when none).
CREATE TABLE account_contacts (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name        text CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL,
    removed_at  timestamptz
);
CREATE UNIQUE INDEX account_contacts_one_live_email ON account_contacts (account_id, lower(email))
    WHERE removed_at IS NULL;

-- A removed payment method stays for the records (charge attempts name it) but is never used.
ALTER TABLE payment_methods DROP CONSTRAINT payment_methods_status_check;
ALTER TABLE payment_methods ADD CONSTRAINT payment_methods_status_check CHECK (status IN
    ('pending', 'ready', 'requires_action', 'failed', 'canceled', 'removed'));

-- A token's label, so a customer can tell its tokens apart.
ALTER TABLE api_tokens ADD COLUMN label text CHECK (length(label) BETWEEN 1 AND 100);
