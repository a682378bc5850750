-- A change of add-on quantities mid-period prorates like a plan change: its lines are
-- `addon_proration` (revenue by add-on, where `proration` lines earn revenue by plan).
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('plan', 'addon', 'metered', 'proration', 'addon_proration'));
