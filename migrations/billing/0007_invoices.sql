-- billing_prod: invoices, their lines, charge attempts and billing's own outbox
-- (control-plane/src/billing).

-- 1. Schedules carry the subscription's current period and what it bills besides its price.
ALTER TABLE billing_schedules ADD COLUMN terms jsonb NOT NULL DEFAULT '{"meters": []}';
ALTER TABLE billing_schedules ADD COLUMN period_start timestamptz;
ALTER TABLE billing_schedules ADD COLUMN period_end timestamptz;

-- 2. Invoices. `draft` (lines may still change: metered usage of the period that ended waits
--    for the late-usage grace window, `finalize_at`) → `open` (numbered, immutable, owed) →
--    `paid` | `uncollectible` | `void`. One invoice per subscription period and reason.
CREATE TABLE invoices (
    id                    uuid PRIMARY KEY,
    account_id            uuid NOT NULL,
    subscription_id       uuid,
    number                text UNIQUE,
    status                text NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
    reason                text NOT NULL CHECK (reason IN
        ('subscription_create', 'subscription_cycle', 'subscription_update')),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal_minor        bigint NOT NULL,
    credit_applied_minor  bigint NOT NULL CHECK (credit_applied_minor >= 0),
    total_minor           bigint NOT NULL,
    amount_due_minor      bigint NOT NULL CHECK (amount_due_minor >= 0),
    amount_paid_minor     bigint NOT NULL CHECK (amount_paid_minor >= 0),
    -- The service period the fixed lines cover (in advance).
    period_start          timestamptz NOT NULL,
    period_end            timestamptz NOT NULL CHECK (period_end >= period_start),
    -- The usage period the metered lines bill (in arrears); NULL when none.
    usage_start           timestamptz,
    usage_end             timestamptz,
    -- What the metered lines are priced by (`billing::Terms`, as sold).
    terms                 jsonb NOT NULL,
    finalize_at           timestamptz NOT NULL,
    finalized_at          timestamptz,
    paid_at               timestamptz,
    voided_at             timestamptz,
    -- When the off-session charger tries next; NULL: not charged automatically now.
    next_charge_at        timestamptz,
    -- The last charge needed the customer (3-D Secure): pay on-session.
    action_required       boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    CHECK ((number IS NULL) = (status = 'draft')),
    CHECK ((finalized_at IS NULL) = (status = 'draft')),
    CHECK (status <> 'paid' OR paid_at IS NOT NULL),
    CHECK (total_minor = subtotal_minor),
    CHECK (amount_due_minor = greatest(total_minor, 0) - credit_applied_minor)
);
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (subscription_id, period_start, reason)
    WHERE reason IN ('subscription_create', 'subscription_cycle');
CREATE INDEX invoices_account ON invoices (account_id, created_at DESC, id DESC);
CREATE INDEX invoices_drafts_due ON invoices (finalize_at) WHERE status = 'draft';
CREATE INDEX invoices_charge_due ON invoices (next_charge_at)
    WHERE status = 'open' AND next_charge_at IS NOT NULL;

-- Gapless invoice numbers, one counter per year, taken in the finalising transaction.
CREATE TABLE invoice_numbers (
    year  int PRIMARY KEY,
    last  bigint NOT NULL CHECK (last >= 0)
);

CREATE TABLE invoice_lines (
    invoice_id         uuid NOT NULL REFERENCES invoices (id),
    position           int NOT NULL CHECK (position >= 0),
    kind               text NOT NULL CHECK (kind IN ('plan', 'addon', 'metered', 'proration')),
    description        text NOT NULL CHECK (length(description) BETWEEN 1 AND 500),
    quantity           bigint NOT NULL CHECK (quantity >= 0),
    amount_minor       bigint NOT NULL,
    -- What the line earns revenue from (plan, meter or add-on key).
    revenue_key        text NOT NULL,
    meter              text,
    -- Graduated/volume pricing: how the quantity fell into tiers (`billing::pricing::TierCharge`).
    tiers              jsonb,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    PRIMARY KEY (invoice_id, position),
    CHECK ((kind = 'metered') = (meter IS NOT NULL))
);

-- A finalised invoice is immutable: its lines and amounts never change (corrections are new
-- documents). Only its status moves on, with the times and charge scheduling that go with it.
CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'invoice_lines' THEN
        IF EXISTS (SELECT 1 FROM invoices WHERE id = coalesce(NEW.invoice_id, OLD.invoice_id)
                   AND status <> 'draft') THEN
            RAISE EXCEPTION 'invoice lines of a finalised invoice cannot change'
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN coalesce(NEW, OLD);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoices are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'draft' AND (
        NEW.number IS DISTINCT FROM OLD.number OR NEW.currency <> OLD.currency
        OR NEW.subtotal_minor <> OLD.subtotal_minor OR NEW.total_minor <> OLD.total_minor
        OR NEW.credit_applied_minor <> OLD.credit_applied_minor
        OR NEW.amount_due_minor <> OLD.amount_due_minor
        OR NEW.period_start <> OLD.period_start OR NEW.period_end <> OLD.period_end
        OR NEW.finalized_at IS DISTINCT FROM OLD.finalized_at
        OR NEW.account_id <> OLD.account_id
        OR NEW.status = 'draft') THEN
        RAISE EXCEPTION 'invoice % is finalised: only its status may change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status IN ('paid', 'void') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'invoice % is %: final', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();
CREATE TRIGGER invoice_lines_immutable BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();

-- 3. Every attempt to collect an invoice through a provider. The provider call's idempotency
--    key is derived from the attempt id, and the attempt is written (pending) before the call:
--    a crash or a timeout after the provider charged is resolved by calling again with the
--    same key, which returns the first outcome instead of charging twice.
CREATE TABLE charge_attempts (
    id                   uuid PRIMARY KEY,
    invoice_id           uuid NOT NULL REFERENCES invoices (id),
    account_id           uuid NOT NULL,
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    presence             text NOT NULL CHECK (presence IN ('off_session', 'on_session')),
    status               text NOT NULL CHECK (status IN
        ('pending', 'succeeded', 'declined', 'requires_action', 'failed')),
    processor            text NOT NULL,
    payment_method       text,
    provider_payment_id  text,
    decline_code         text,
    error                text,
    idempotency_key      text NOT NULL UNIQUE,
    created_at           timestamptz NOT NULL,
    -- A pending attempt whose outcome was never recorded (a crash, a timeout) is driven again,
    -- with the same key, from then on.
    next_try_at          timestamptz,
    completed_at         timestamptz,
    CHECK ((status = 'pending') = (completed_at IS NULL))
);
-- At most one attempt in flight per invoice.
CREATE UNIQUE INDEX charge_attempts_one_pending ON charge_attempts (invoice_id)
    WHERE status IN ('pending', 'requires_action');
CREATE INDEX charge_attempts_invoice ON charge_attempts (invoice_id, created_at);
CREATE INDEX charge_attempts_stale ON charge_attempts (next_try_at) WHERE status = 'pending';

-- 4. billing_prod's own transactional outbox (same shape and relay as cf_prod's): what billing
--    tells the rest of the lifecycle (a failed charge for dunning, a paid invoice).
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    topic         text NOT NULL CHECK (topic IN ('billing.payment_failed', 'billing.invoice_paid')),
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    available_at  timestamptz NOT NULL,
    attempts      int NOT NULL DEFAULT 0,
    last_error    text,
    processed_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (available_at) WHERE processed_at IS NULL;
CREATE INDEX outbox_processed ON outbox (processed_at) WHERE processed_at IS NOT NULL;
