-- billing_prod: the double-entry ledger (control-plane/src/ledger).
--
-- A transaction is one business event (an invoice finalised, a payment, a credit, a refund, a
-- write-off), posted once: (kind, reference) is unique, so a retried post finds the first one.
-- Its entries are signed minor units of the transaction's currency, debits positive and credits
-- negative, and they sum to zero: the application checks it before writing and the database
-- checks it again at commit (a deferred constraint trigger), so an unbalanced transaction
-- cannot be written by any path. Nothing is ever updated or deleted: corrections are new
-- transactions. Every balance is a sum of entries.
--
-- Ledger accounts (text, checked below):
--   receivable              what the customer owes (asset; per customer)
--   credit                  what we owe the customer as credit (liability; per customer)
--   cash:<processor>        money held at a payment processor (asset)
--   revenue:plan:<key>      revenue by plan, revenue:meter:<key> by meter,
--   revenue:addon:<key>     and by add-on (income)
--   refunds                 money returned (contra-revenue)
--   bad_debt                receivables written off (expense)

CREATE TABLE ledger_transactions (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN
        ('invoice_finalized', 'payment', 'credit', 'credit_note', 'refund', 'write_off')),
    -- What the transaction is for: the invoice, charge attempt, credit or refund id.
    reference   text NOT NULL CHECK (length(reference) BETWEEN 1 AND 200),
    -- The customer (Tollgate account) the transaction belongs to.
    account_id  uuid NOT NULL,
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description text NOT NULL CHECK (length(description) <= 500),
    posted_at   timestamptz NOT NULL,
    UNIQUE (kind, reference)
);
CREATE INDEX ledger_transactions_account ON ledger_transactions (account_id, posted_at);

CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  uuid NOT NULL REFERENCES ledger_transactions (id),
    ledger_account  text NOT NULL CHECK (ledger_account ~
        '^(receivable|credit|refunds|bad_debt|cash:[a-z0-9_]{1,32}|revenue:(plan|meter|addon):[A-Za-z0-9_.-]{1,128})$'),
    -- Debit positive, credit negative; never zero.
    amount_minor    bigint NOT NULL CHECK (amount_minor <> 0)
);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (ledger_account);

-- Append-only: no UPDATE, DELETE or TRUNCATE of either table, whoever asks.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Balanced at commit: every transaction has at least two entries and they sum to zero. Runs
-- once per inserted transaction row (entries cannot be added to a committed transaction
-- without this check running again for it, through the entries trigger).
CREATE FUNCTION ledger_assert_balanced(tx uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    s numeric;
BEGIN
    SELECT count(*), coalesce(sum(amount_minor), 0) INTO n, s
    FROM ledger_entries WHERE transaction_id = tx;
    IF n < 2 OR s <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % is not balanced: % entries summing to %', tx, n, s
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;
CREATE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.id);
    RETURN NULL;
END
$$;
CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.transaction_id);
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balanced();
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced();
