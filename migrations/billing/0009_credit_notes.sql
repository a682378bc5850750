-- Credit notes: the only correction of a finalised invoice. A note credits part or all of an
-- invoice's total: what the invoice still asks for is reduced first (`reduced_due_minor`),
-- the rest becomes customer credit (`credited_minor`) that the next invoices use. The invoice
-- itself never changes: only the running sums below grow, and a note is never edited or
-- deleted. Gapless numbers per year (`CN-YYYY-NNNNNN`), taken in the issuing transaction.
CREATE TABLE credit_note_numbers (
    year  int PRIMARY KEY,
    last  bigint NOT NULL CHECK (last >= 0)
);

CREATE TABLE credit_notes (
    id                 uuid PRIMARY KEY,
    number             text NOT NULL UNIQUE,
    invoice_id         uuid NOT NULL REFERENCES invoices (id),
    account_id         uuid NOT NULL,
    currency           char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    reduced_due_minor  bigint NOT NULL CHECK (reduced_due_minor >= 0),
    credited_minor     bigint NOT NULL CHECK (credited_minor >= 0),
    reason             text NOT NULL CHECK (reason IN
        ('duplicate', 'fraudulent', 'order_change', 'product_unsatisfactory', 'service_issue')),
    memo               text NOT NULL CHECK (length(memo) BETWEEN 1 AND 500),
    -- Who issued it (the admin actor, later the support agent).
    issued_by          text NOT NULL CHECK (length(issued_by) BETWEEN 1 AND 200),
    created_at         timestamptz NOT NULL,
    CHECK (amount_minor = reduced_due_minor + credited_minor)
);
CREATE INDEX credit_notes_invoice ON credit_notes (invoice_id, created_at);
CREATE INDEX credit_notes_account ON credit_notes (account_id, created_at DESC, id DESC);

CREATE FUNCTION credit_notes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit notes are never edited or deleted' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER credit_notes_append_only BEFORE UPDATE OR DELETE ON credit_notes
    FOR EACH ROW EXECUTE FUNCTION credit_notes_append_only();

-- What the notes of an invoice credited in all, and the part that reduced what it asks for.
-- `amount_remaining_minor` is what is still owed: the charger, on-session payments and
-- dunning read it.
ALTER TABLE invoices ADD COLUMN credit_noted_minor bigint NOT NULL DEFAULT 0
    CHECK (credit_noted_minor >= 0);
ALTER TABLE invoices ADD COLUMN amount_credited_minor bigint NOT NULL DEFAULT 0
    CHECK (amount_credited_minor >= 0);
ALTER TABLE invoices ADD CONSTRAINT invoices_credit_within_total
    CHECK (credit_noted_minor <= greatest(total_minor, 0) AND amount_credited_minor <= credit_noted_minor);
ALTER TABLE invoices ADD COLUMN amount_remaining_minor bigint
    GENERATED ALWAYS AS (amount_due_minor - amount_paid_minor - amount_credited_minor) STORED;

-- The sums only grow, and only on a finalised invoice.
CREATE FUNCTION invoices_credit_only_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.credit_noted_minor < OLD.credit_noted_minor
       OR NEW.amount_credited_minor < OLD.amount_credited_minor
       OR (NEW.credit_noted_minor <> OLD.credit_noted_minor AND OLD.status IN ('draft', 'void')) THEN
        RAISE EXCEPTION 'invoice %: credit notes only add up, on a finalised invoice', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_credit_only_grows BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_credit_only_grows();
