-- The maintenance pass looks every second for accounts in dunning whose days past due moved
-- on: only those rows, by index, not a scan of every account.
CREATE INDEX accounts_past_due ON accounts (id) WHERE past_due_since IS NOT NULL;
